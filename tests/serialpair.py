"""Serial lines for Modbus RTU tests: two pseudo-terminals joined like a null-modem cable.

`serial_pair` (a pytest fixture) runs socat, as an engineer would on a laptop, and yields
the two device paths: a client opens one, the simulated meters the other.

A pty pair passes bytes perfectly and ignores baud rate and parity, so it cannot show what a
wrong baud rate or a noisy line does. `Line` joins two pty pairs through a thread that
carries every burst of bytes through a `Wire`: `uart_mismatch` re-samples the bit stream as a
UART at another baud rate would (what a meter set to 9600 makes of a request sent at 19200),
`flip_bits` corrupts answers like noise, `late_answers` makes a meter answer too late.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import pytest
from systemtools import require_tool

__all__ = ["Line", "Wire", "flip_bits", "late_answers", "need_socat", "resample", "serial_pair", "uart_mismatch"]


def need_socat() -> str:
    """socat's path; fails the test in CI (where it must be installed), else skips."""
    return require_tool("socat", "socat", "RTU tests need it")


@pytest.fixture
def serial_pair(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two linked pseudo-terminal paths (a, b): what is written to one is read from the other."""
    socat = need_socat()
    a, b = tmp_path / "a", tmp_path / "b"
    proc = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 10.0
        while not (a.exists() and b.exists()):
            if proc.poll() is not None:
                pytest.fail(f"socat exited with {proc.returncode}: {proc.stderr.read()}")  # type: ignore[union-attr]
            if time.monotonic() > deadline:
                pytest.fail("socat did not create its pseudo-terminals within 10 s")
            time.sleep(0.01)
        # socat logs to stderr for its whole life; nobody reads it after start-up, so drain
        # it in the background lest a full pipe block socat.
        threading.Thread(target=proc.stderr.read, daemon=True).start()  # type: ignore[union-attr]
        yield str(a), str(b)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- a line with faults --------------------------------------------------------------------

# A Wire decides what one burst of bytes travelling one way becomes: (direction, data) ->
# the bursts to deliver, each with its direction. "request" travels from the client to the
# meters, "answer" back; a wire may drop a burst, change it, or hold it and deliver it later.
Wire = Callable[[str, bytes], list[tuple[str, bytes]]]


def _frame_bits(data: bytes, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> list[int]:
    """The line levels of `data` sent by a UART, one entry per bit time, idle high."""
    bits = [1, 1]
    for byte in data:
        word = [(byte >> i) & 1 for i in range(bytesize)]
        bits.append(0)
        bits.extend(word)
        if parity != "N":
            ones = sum(word)
            bits.append(ones % 2 if parity == "E" else 1 - ones % 2)
        bits.extend([1] * stopbits)
    bits.extend([1, 1])
    return bits


def resample(data: bytes, sent_baud: int, heard_baud: int) -> bytes:
    """What a UART at `heard_baud` receives of `data` sent at `sent_baud` (8N1 both ends).

    Like a real UART it waits for a falling edge, samples the middle of each bit of its own
    bit time, and delivers the byte even if the stop bit is wrong (a framing error).
    """
    levels = _frame_bits(data)
    sent_bit = 1.0 / sent_baud
    heard_bit = 1.0 / heard_baud
    duration = len(levels) * sent_bit

    def level_at(t: float) -> int:
        i = int(t / sent_bit)
        return levels[i] if 0 <= i < len(levels) else 1

    out = bytearray()
    step = min(sent_bit, heard_bit) / 8
    t, previous = 0.0, 1
    while t < duration:
        current = level_at(t)
        if previous == 1 and current == 0 and level_at(t + heard_bit / 2) == 0:
            value = 0
            for i in range(8):
                value |= level_at(t + (1.5 + i) * heard_bit) << i
            out.append(value)
            t += 9.5 * heard_bit  # the middle of the stop bit: look for the next start
            previous = level_at(t)
            continue
        previous = current
        t += step
    return bytes(out)


def uart_mismatch(client_baud: int, meter_baud: int) -> Wire:
    """A client at `client_baud` on a bus of meters set to `meter_baud`."""

    def wire(direction: str, data: bytes) -> list[tuple[str, bytes]]:
        if direction == "request":
            return [(direction, resample(data, client_baud, meter_baud))]
        return [(direction, resample(data, meter_baud, client_baud))]

    return wire


def flip_bits(mask: int = 0x10, every: int = 3) -> Wire:
    """Noise on answers: every `every`-th byte of an answer has the bits of `mask` flipped."""

    def wire(direction: str, data: bytes) -> list[tuple[str, bytes]]:
        if direction == "answer":
            data = bytes(b ^ mask if i % every == every - 1 else b for i, b in enumerate(data))
        return [(direction, data)]

    return wire


def late_answers(unit: int) -> Wire:
    """Unit `unit` answers too late: each of its answers arrives only after the client's
    next request has gone out, while the client waits for another answer."""
    held: list[bytes] = []

    def wire(direction: str, data: bytes) -> list[tuple[str, bytes]]:
        if direction == "answer" and data[:1] == bytes([unit]):
            held.append(data)
            return []
        out = [(direction, data)]
        if direction == "request":
            out += [("answer", answer) for answer in held]
            held.clear()
        return out

    return wire


def _open_raw_pty() -> tuple[int, int, str]:
    master, slave = os.openpty()
    tty.setraw(slave, termios.TCSANOW)
    return master, slave, os.ttyname(slave)


class Line:
    """A client device and a meter-side device joined through a `Wire`.

    Use as a context manager; `client` and `meters` are the device paths. Bytes are relayed
    in bursts: a burst ends when the sender has been quiet for `gap` seconds, so one Modbus
    frame is one burst, as it is one uninterrupted bit stream on a real line.
    """

    def __init__(self, wire: Wire, gap: float = 0.003) -> None:
        self.wire = wire
        self.gap = gap
        self._client_master, self._client_slave, self.client = _open_raw_pty()
        self._meter_master, self._meter_slave, self.meters = _open_raw_pty()
        self._stop_r, self._stop_w = os.pipe()
        self._thread = threading.Thread(target=self._run, name="serial line", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        os.write(self._stop_w, b"x")
        self._thread.join(timeout=5)
        # The slave ends stay open until here so that a device closed and reopened by a
        # client does not hang up the pty (reads on the master would fail with EIO).
        for fd in (self._client_master, self._client_slave, self._meter_master,
                   self._meter_slave, self._stop_r, self._stop_w):
            os.close(fd)

    def _run(self) -> None:
        masters = {"request": self._meter_master, "answer": self._client_master}
        pending = {self._client_master: ("request", bytearray()), self._meter_master: ("answer", bytearray())}
        while True:
            busy = any(buf for _, buf in pending.values())
            ready, _, _ = select.select([*pending, self._stop_r], [], [], self.gap if busy else None)
            if self._stop_r in ready:
                return
            for fd in ready:
                pending[fd][1].extend(os.read(fd, 4096))
            for fd, (direction, buf) in pending.items():
                if buf and fd not in ready:  # quiet for a gap: the burst is complete
                    burst = bytes(buf)
                    buf.clear()
                    for to, data in self.wire(direction, burst):
                        if data:
                            os.write(masters[to], data)
