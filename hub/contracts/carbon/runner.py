"""The carbon-flow contract's runner: every settlement interval, once it has ended and its
readings had time to be sealed, compute its carbon emission flow from the chain and publish
the results to the chain (hub/contracts/runner.py), in interval order, none skipped.

    [runner]            # its gateway identity: id, key, queue
    [uplink]            # where its batches go, as in an agent's config
    [carbon]
    model = "model.json"            # written by gridtrace carbon model
    hub_config = "../hub/hub.toml"  # the hub whose sealed readings it reads (or database = URL)
    results = "results"             # whole interval documents, named by their SHA-256
    interval_s = 900
    settle_s = 60                   # wait after an interval ends before computing it
    give_up_s = 3600                # then record an interval that cannot be computed as failed
    start = "2026-11-23T00:00:00Z"  # the first interval (runner-init writes the one running then)
    end = "2027-01-01T00:00:00Z"    # optional: no interval from here on (the model is replaced)
    providers = "providers.json"    # optional: outsource the linear algebra (gridtrace compute)
    provider_book = "book.json"

Progress is the queue's: an interval's records and the runner's place are committed in one
transaction, so a restart neither repeats nor skips an interval. An interval that fails
(a meter without readings, say) is retried every tick until `give_up_s` after its end (and
for at least `give_up_s` by this process, so a runner catching up after an outage does not give
up on its first try), then recorded with its error; later intervals wait for it, so the
chain's intervals stay in order and without holes. A database that holds some batches by
header only (a custody replica) is retried without end: that says nothing about the interval.

An interval's inputs are the readings sealed in blocks up to the chain's height when it is
computed; the height is in the result, so an audit later computes from the same readings.
Changing `interval_s` under a running model would cut intervals that overlap or skip: start a
new runner (its own queue) at the next boundary instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gridtrace.jsonfile import write_durably
from gridtrace.tomlconfig import Section, read_toml
from hub.contracts.carbon.document import canonical_json
from hub.contracts.carbon.model import NetworkModel
from hub.contracts.carbon.records import (
    MODEL_SUBJECT,
    SUBJECT,
    failed_interval_record,
    interval_records,
    model_record,
    result_sha256,
)
from hub.contracts.runner import Publisher, RunnerIdentity, parse_runner
from hub.storage.store import Store
from protos.canonical import decode_entry
from protos.records import ContractRecord

log = logging.getLogger("gridtrace.hub.contracts.carbon")

CARBON_KEYS = {"model", "hub_config", "database", "results", "interval_s", "settle_s", "give_up_s", "start", "end",
               "providers", "provider_book", "shares"}


@dataclass(frozen=True)
class CarbonRunnerConfig:
    path: Path
    identity: RunnerIdentity
    model: Path
    database_url: str
    results: Path
    interval_ns: int
    settle_ns: int
    give_up_ns: int
    start_ns: int
    end_ns: int | None
    providers: Path | None
    provider_book: Path | None
    shares: bool


def load_runner_config(path: Path) -> CarbonRunnerConfig:
    from hub.certificates.document import parse_time
    from hub.config import load_hub_config

    path = Path(path)
    doc = read_toml(path, {"runner", "uplink", "carbon"})
    identity = parse_runner(path, doc)
    c = Section(path, "carbon", doc.get("carbon", {}), CARBON_KEYS)
    if ("hub_config" in c.table) == ("database" in c.table):
        raise c.fail("hub_config", "give hub_config (the hub's hub.toml) or database (its URL), one of them")
    database = c.get("database", str, "") or load_hub_config(c.path_value("hub_config")).database_url
    interval_s = c.positive("interval_s", int, 900)
    if interval_s < 10:
        raise c.fail("interval_s", f"is {interval_s}; an interval needs at least 10 s of readings")
    start_ns, end_ns = _time(c, "start", parse_time), _time(c, "end", parse_time)
    if start_ns is None:
        raise c.fail("start", 'missing: the first interval to compute, e.g. start = "2026-11-23T00:00:00Z"')
    if end_ns is not None and end_ns <= start_ns:
        raise c.fail("end", "must be after start")
    settle_s, give_up_s = c.get("settle_s", float, 60.0), c.positive("give_up_s", float, 3600.0)
    if settle_s < 0 or give_up_s < settle_s:
        raise c.fail("give_up_s", f"needs 0 <= settle_s ({settle_s}) <= give_up_s ({give_up_s})")
    return CarbonRunnerConfig(
        path=path, identity=identity, model=c.path_value("model"), database_url=database,
        results=c.path_value("results", "results"), interval_ns=interval_s * 1_000_000_000,
        settle_ns=int(settle_s * 1e9), give_up_ns=int(give_up_s * 1e9), start_ns=start_ns, end_ns=end_ns,
        providers=c.path_value("providers", None), provider_book=c.path_value("provider_book", None),
        shares=c.get("shares", bool, True),
    )


def _time(c: Section, key: str, parse: Callable[[str], int]) -> int | None:
    if key not in c.table:
        return None
    try:
        return parse(c.get(key, str))
    except ValueError as exc:
        raise c.fail(key, str(exc)) from exc


def next_interval(last_from_ns: int | None, start_ns: int, interval_ns: int) -> tuple[int, int]:
    """The interval after the last one published, or the one holding `start`. Intervals are
    aligned to the epoch (UTC), so every runner of a model cuts time the same way."""
    first = last_from_ns + interval_ns if last_from_ns is not None else start_ns - start_ns % interval_ns
    return first, first + interval_ns


@dataclass(frozen=True)
class Outcome:
    from_ns: int
    to_ns: int
    result_sha256: str | None  # None: recorded as failed
    error: str | None = None


class CarbonRunner:
    def __init__(self, cfg: CarbonRunnerConfig, model: NetworkModel, publisher: Publisher, store: Store) -> None:
        self.cfg = cfg
        self.model = model
        self.publisher = publisher
        self.store = store
        self._failing_since: dict[int, int] = {}  # interval start -> when this process first failed it
        self.outsourcer = None
        if cfg.providers is not None:
            from hub.compute.providers import outsourcer_from_files

            self.outsourcer = outsourcer_from_files(cfg.providers, cfg.provider_book)

    def registered(self) -> bool:
        """This runner has put this model version in the hub's store already."""
        for batch_id, row in self.store.meter_entries(MODEL_SUBJECT, -(1 << 63), (1 << 63) - 1):
            record = decode_entry(row.body)
            if (isinstance(record, ContractRecord) and record.document().get("model_version") == self.model.version
                    and self.store.batch_by_id(batch_id).gateway_id == self.publisher.identity.gateway_id):
                return True
        return False

    def register(self, now_ns: int) -> bool:
        if self.registered():
            return False
        self.publisher.publish([model_record(self.model, now_ns)])
        log.info("model %s registered", self.model.version[:16])
        return True

    def step(self, now_ns: int) -> list[Outcome]:
        """Compute and publish every interval that is due, in order; stop at the first that
        fails and is still worth retrying."""
        done = []
        while True:
            from_ns, to_ns = next_interval(self.publisher.last_timestamp(SUBJECT), self.cfg.start_ns,
                                           self.cfg.interval_ns)
            if now_ns < to_ns + self.cfg.settle_ns or (self.cfg.end_ns is not None and from_ns >= self.cfg.end_ns):
                return done
            outcome = self._interval(from_ns, to_ns, now_ns)
            if outcome is None:
                return done
            done.append(outcome)

    def _interval(self, from_ns: int, to_ns: int, now_ns: int) -> Outcome | None:
        from hub.compute.outsource import OutsourcingError
        from hub.contracts.carbon.compute import IncompleteStore, compute_interval
        from hub.contracts.carbon.flow import CarbonFlowError
        from hub.contracts.carbon.interval import IntervalError
        from hub.contracts.carbon.powerflow import NetworkError

        cycle = from_ns // self.cfg.interval_ns
        solver = None
        if self.outsourcer is not None:
            outsourcer = self.outsourcer
            solver = lambda a, b: outsourcer.solve(a, b, cycle)
            outsourcer.records.clear()  # this interval's only: a service must not keep them all
        head = self.store.head()
        height = 0 if head is None else head.height
        try:
            computed = compute_interval(self.store, self.model, from_ns, to_ns, solver, self.cfg.shares, height)
        except IncompleteStore as exc:
            log.error("interval from %d: %s; retrying", from_ns, exc)
            return None
        except (IntervalError, NetworkError, CarbonFlowError, OutsourcingError) as exc:
            first = self._failing_since.setdefault(from_ns, now_ns)
            if now_ns < to_ns + self.cfg.give_up_ns or now_ns - first < self.cfg.give_up_ns:
                log.warning("interval from %d: %s; retrying", from_ns, exc)
                return None
            log.error("interval from %d: %s; recorded as failed", from_ns, exc)
            self.publisher.publish([failed_interval_record(self.model, from_ns, to_ns, height, str(exc))])
            self._failing_since.pop(from_ns, None)
            return Outcome(from_ns, to_ns, None, str(exc))
        finally:
            self._keep_book()
        self._failing_since.pop(from_ns, None)
        doc = computed.doc
        if self.outsourcer is not None:
            doc["outsourcing"] = {"cycle": cycle, "records": [r.to_json() for r in self.outsourcer.records],
                                  "provider_book": self.outsourcer.book.to_json()}
        digest = result_sha256(doc)
        self._write_result(digest, doc)  # before the records that name it: never a hash without its document
        self.publisher.publish(interval_records(doc))
        total = doc["totals"]["load_emission_t_per_h"] * (to_ns - from_ns) / 3.6e12
        log.info("interval from %d published: %d meters, %.6g tCO2 to loads, result %s, sealed up to block %d%s",
                 from_ns, len(doc["interval"]["meters"]), total, digest[:16], doc["interval"]["sealed_height"],
                 f" ({computed.left_out} entries not sealed yet left out)" if computed.left_out else "")
        return Outcome(from_ns, to_ns, digest)

    def _keep_book(self) -> None:
        if self.outsourcer is not None and self.cfg.provider_book is not None:
            from hub.compute.providers import save_book

            save_book(self.cfg.provider_book, self.outsourcer.book)

    def _write_result(self, digest: str, doc: dict) -> None:
        self.cfg.results.mkdir(parents=True, exist_ok=True)
        write_durably(self.cfg.results / f"{digest}.json", canonical_json(doc) + "\n")

    def close(self) -> None:
        if self.outsourcer is not None:
            self.outsourcer.close()


async def run_carbon(cfg: CarbonRunnerConfig, stop: asyncio.Event, once: bool = False,
                     drain_timeout_s: float = 30.0, tick_s: float = 5.0) -> int:
    """Run until `stop` (or, with `once`, publish what is due, wait for its receipts and return).
    Returns 0, or 1 when `once` could not get every receipt in time."""
    from hub.contracts.carbon.model import read_model

    model = read_model(cfg.model)
    publisher = Publisher(cfg.identity)
    store = Store(cfg.database_url)
    runner = CarbonRunner(cfg, model, publisher, store)
    log.info("carbon runner %s: model %s, %d meters, intervals of %d s",
             cfg.identity.gateway_id, model.version[:16], len(model.meters), cfg.interval_ns // 1_000_000_000)
    try:
        if once:
            await asyncio.to_thread(runner.register, time.time_ns())
            await asyncio.to_thread(runner.step, time.time_ns())
            if not await publisher.drain(drain_timeout_s):
                log.error("%d batches without a receipt after %.0f s; they stay queued for the next run",
                          publisher.pending_batches(), drain_timeout_s)
                return 1
            return 0
        uplink_stop = asyncio.Event()  # stops after the main loop, once the last results are receipted
        uplink = asyncio.create_task(publisher.run(uplink_stop))
        registered = False
        while not stop.is_set():
            try:
                if not registered:
                    if await asyncio.to_thread(runner.register, time.time_ns()):
                        publisher.wake()
                    registered = True
                if await asyncio.to_thread(runner.step, time.time_ns()):
                    publisher.wake()
            except Exception:  # the runner must not stop for a bad interval or a database hiccup
                log.exception("carbon runner step failed; retrying in %.0f s", tick_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), tick_s)
        await publisher.uplink.drain(drain_timeout_s)
        uplink_stop.set()
        await uplink
        return 0
    finally:
        runner.close()
        store.close()
        publisher.close()

