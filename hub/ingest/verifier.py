"""Batch checks off the event loop: verifier processes fed the raw bytes of each batch.

The server process receives a `SignedBatch` as the bytes gRPC read and hands
them to a verifier process over a pipe; the process parses the message, scans
every entry, computes the Merkle root, verifies the Ed25519 signature
(`hub.ingest.check.verify_signed_batch`) and sends back a `Verdict` (the checked
fields and the entries packed as they are stored, `hub.storage.payload`) or the
rejection, so the server process never parses or copies a batch's entries. Verifiers hold no state but the gateway keys, which the server
pushes to each process whenever it (re)loads them; a pipe is FIFO, so a batch
sent after a key update is checked with the new keys.

Each process has one sender and one receiver thread in the server process:
blocking `send_bytes`/`recv_bytes` release the GIL, so the event loop never waits
on a pipe. A process that dies is started again; the batches it was checking
fail with UNAVAILABLE, which makes their gateways re-send them.

`InlineVerifier` (`[ingest] verifier_processes = 0`) runs the same check in the
server process, for tests and tiny hubs.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import multiprocessing
import pickle
import queue
import struct
import threading
from collections.abc import Mapping
from multiprocessing.connection import Connection

from hub.ingest.check import (
    CheckedBatch,
    Reason,
    Rejection,
    Verdict,
    check_raw_batch,
    checked_batch,
    parse_raw_batch,
    verify_signed_batch,
)
from protos.signing import PublicKey, parse_public_key_pem

log = logging.getLogger("gridtrace.hub.ingest")

# gateway id -> key id -> PEM, as the store holds them
KeyPems = Mapping[str, Mapping[str, str]]

_KEYS = b"K"
_BATCH = b"B"
_QUIT = b"Q"
_ID = struct.Struct(">Q")


def parse_keys(pems: KeyPems) -> dict[str, dict[str, PublicKey]]:
    return {
        gw: {kid: parse_public_key_pem(pem, f"key {kid} of gateway {gw}") for kid, pem in ks.items()}
        for gw, ks in pems.items()
    }


class InlineVerifier:
    """Checks in the calling thread (the event loop): no processes, for tests and tiny hubs."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, PublicKey]] = {}
        self.restarts = 0

    async def start(self) -> None:
        pass

    def update_keys(self, pems: KeyPems) -> None:
        self.keys = parse_keys(pems)

    async def check(self, raw: bytes) -> CheckedBatch:
        return check_raw_batch(raw, self.keys)

    async def stop(self) -> None:
        pass


def _serve(conn: Connection) -> None:
    """A verifier process: answer each batch with (its id, the result) pickled, until EOF or quit."""
    keys: dict[str, dict[str, PublicKey]] = {}
    while True:
        try:
            msg = conn.recv_bytes()
        except (EOFError, OSError):
            return
        if msg[:1] == _KEYS:
            keys = parse_keys(pickle.loads(msg[1:]))
            continue
        if msg[:1] == _QUIT:
            return
        (req,) = _ID.unpack_from(msg, 1)
        try:
            batch = parse_raw_batch(memoryview(msg)[1 + _ID.size :])
            result: object = verify_signed_batch(batch, keys).without_payload(batch)
        except Rejection as exc:
            result = (exc.reason.name, exc.message)
        except Exception as exc:  # noqa: BLE001 - a defect in a check must not kill the verifier
            result = (Reason.INTERNAL.name, f"internal error while checking the batch: {exc!r}")
        conn.send_bytes(pickle.dumps((req, result), protocol=pickle.HIGHEST_PROTOCOL))


class _Worker:
    """One verifier process and the two threads that feed it and read its answers."""

    def __init__(self, index: int, ctx: multiprocessing.context.BaseContext) -> None:
        self.index = index
        parent, child = ctx.Pipe(duplex=True)
        self.conn = parent
        self.process = ctx.Process(target=_serve, args=(child,), name=f"gridtrace-verifier-{index}", daemon=True)
        self.process.start()
        child.close()  # only the process holds its end: its exit is our EOF
        self.outbox: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.in_flight: dict[int, asyncio.Future] = {}
        self.sender = threading.Thread(target=self._send, name=f"verifier-{index}-send", daemon=True)
        self.sender.start()

    def _send(self) -> None:
        while (msg := self.outbox.get()) is not None:
            try:
                self.conn.send_bytes(msg)
            except (OSError, ValueError):
                return  # the process is gone; the receiver reports it

    def stop(self) -> None:
        """Answer what was sent, then exit; the receiver thread sees the EOF."""
        self.outbox.put(_QUIT)
        self.outbox.put(None)
        self.sender.join(timeout=5)
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class VerifierPool:
    """`processes` verifier processes; `check(raw)` goes to the one with the fewest batches in hand."""

    def __init__(self, processes: int, context: str = "forkserver") -> None:
        if processes < 1:
            raise ValueError("a verifier pool needs at least one process; use InlineVerifier for none")
        self.processes = processes
        self._ctx = multiprocessing.get_context(context)
        if context == "forkserver":
            # Forked from a server that already imported the checks: a (re)started verifier is ready at once.
            self._ctx.set_forkserver_preload(["hub.ingest.verifier"])
        self._workers: list[_Worker] = []
        self._ids = itertools.count(1)
        self._keys_msg = _KEYS + pickle.dumps({})
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self.restarts = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for i in range(self.processes):
            self._workers.append(await self._spawn(i))

    async def _spawn(self, index: int) -> _Worker:
        assert self._loop is not None
        w = await self._loop.run_in_executor(None, _Worker, index, self._ctx)
        w.outbox.put(self._keys_msg)
        threading.Thread(target=self._receive, args=(w,), name=f"verifier-{index}-recv", daemon=True).start()
        return w

    def update_keys(self, pems: KeyPems) -> None:
        self._keys_msg = _KEYS + pickle.dumps({gw: dict(ks) for gw, ks in pems.items()})
        for w in self._workers:
            w.outbox.put(self._keys_msg)

    async def check(self, raw: bytes) -> CheckedBatch:
        if self._stopping or not self._workers:
            raise Rejection(Reason.UNAVAILABLE, "hub shutting down: batch not checked; re-send it")
        assert self._loop is not None
        w = min(self._workers, key=lambda w: len(w.in_flight))
        req = next(self._ids)
        fut = self._loop.create_future()
        w.in_flight[req] = fut
        w.outbox.put(_BATCH + _ID.pack(req) + raw)
        result = await fut
        if isinstance(result, Verdict):
            return checked_batch(result, raw)
        reason, message = result
        raise Rejection(Reason[reason], message)

    def _receive(self, w: _Worker) -> None:
        """Receiver thread: resolve each answer on the event loop; report the process's end."""
        loop = self._loop
        assert loop is not None
        while True:
            try:
                msg = w.conn.recv_bytes()
            except (EOFError, OSError):
                break
            req, result = pickle.loads(msg)
            loop.call_soon_threadsafe(self._resolve, w, req, result)
        try:
            loop.call_soon_threadsafe(self._exited, w)
        except RuntimeError:
            pass  # the loop is closed: the hub is gone

    @staticmethod
    def _resolve(w: _Worker, req: int, result: object) -> None:
        fut = w.in_flight.pop(req, None)
        if fut is not None and not fut.done():
            fut.set_result(result)

    def _exited(self, w: _Worker) -> None:
        w.process.join(timeout=1)
        lost = list(w.in_flight.values())
        w.in_flight.clear()
        for fut in lost:
            if not fut.done():
                fut.set_result(
                    (Reason.UNAVAILABLE.name,
                     f"verifier process {w.index} exited (code {w.process.exitcode}) while checking this batch; re-send it")
                )
        if self._stopping or w not in self._workers:
            return
        log.error("verifier process %d exited (code %s); %d batches failed with UNAVAILABLE; starting it again",
                  w.index, w.process.exitcode, len(lost))
        self.restarts += 1
        w.outbox.put(None)
        self._workers.remove(w)
        asyncio.ensure_future(self._replace(w.index))

    async def _replace(self, index: int) -> None:
        try:
            self._workers.append(await self._spawn(index))
        except Exception:  # noqa: BLE001 - keep serving with the processes that remain
            log.exception("verifier process %d could not be started again", index)

    def pids(self) -> list[int]:
        return [w.process.pid for w in self._workers if w.process.pid is not None]

    async def stop(self) -> None:
        """Stop after the batches in hand are answered (the caller drained the streams first)."""
        self._stopping = True
        workers, self._workers = self._workers, []
        assert self._loop is not None or not workers
        for w in workers:
            await self._loop.run_in_executor(None, w.stop)
