"""A replica's durable consensus state: its view and votes, and the blocks it decided.

The core asks for `Persist` before the message it precedes may leave, and reports `Decide`;
`ConsensusJournal.record(actions)` makes both durable (SQLite, WAL, synchronous=FULL: fsync'd
on commit) and returns the sends, in order, that may go out now. After a crash,
`load()` gives back what a new `Replica` needs: it will not vote twice at a height it voted at,
and it resumes after the last block it decided. Votes are public and carry no secret.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from hub.consensus.core import Action, Decide, Durable, Persist, Send, Vote
from hub.consensus.messages import CommitCertificate, MessageError, decode, encode

_SCHEMA = """
CREATE TABLE IF NOT EXISTS replica_state (
    one INTEGER PRIMARY KEY CHECK (one = 1),
    view INTEGER NOT NULL,
    changing_to INTEGER
);
CREATE TABLE IF NOT EXISTS replica_votes (
    kind TEXT NOT NULL, view INTEGER NOT NULL, height INTEGER NOT NULL, digest BLOB NOT NULL,
    PRIMARY KEY (kind, view, height)
);
CREATE TABLE IF NOT EXISTS decided (
    height INTEGER PRIMARY KEY,
    certificate BLOB NOT NULL
);
"""


class JournalError(Exception):
    """The journal on disk does not read back as a replica's state; the message says where."""


class ConsensusJournal:
    def __init__(self, path: Path) -> None:
        self.path = path
        # Used from one thread at a time, not always the creating one (a replica process
        # fsyncs on a worker thread so its event loop keeps serving).
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(_SCHEMA)

    def close(self) -> None:
        self.db.close()

    def record(self, actions: Iterable[Action]) -> list[Send]:
        """Make every Persist and Decide durable, in order; return the sends that may go now."""
        sends: list[Send] = []
        for a in actions:
            if isinstance(a, Persist):
                self._save(a.state)
            elif isinstance(a, Decide):
                self._append(a.certificate)
            elif isinstance(a, Send):
                sends.append(a)
        return sends

    def _save(self, d: Durable) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT INTO replica_state (one, view, changing_to) VALUES (1, ?, ?) "
                "ON CONFLICT (one) DO UPDATE SET view = excluded.view, changing_to = excluded.changing_to",
                (d.view, d.changing_to),
            )
            self.db.execute("DELETE FROM replica_votes")
            self.db.executemany(
                "INSERT INTO replica_votes (kind, view, height, digest) VALUES (?, ?, ?, ?)",
                [(v.kind, v.view, v.height, v.digest) for v in d.votes],
            )

    def _append(self, cert: CommitCertificate) -> None:
        with self._transaction():
            self.db.execute(
                "INSERT INTO decided (height, certificate) VALUES (?, ?)", (cert.proposal.height, encode(cert))
            )

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")  # with synchronous=FULL: on disk when this returns

    def load(self) -> tuple[Durable | None, list[CommitCertificate]]:
        """(the view and votes, the decided blocks in order) as last made durable."""
        row = self.db.execute("SELECT view, changing_to FROM replica_state").fetchone()
        votes = tuple(
            Vote(kind, view, height, bytes(digest))
            for kind, view, height, digest in self.db.execute(
                "SELECT kind, view, height, digest FROM replica_votes ORDER BY kind, view, height"
            )
        )
        certs: list[CommitCertificate] = []
        for height, blob in self.db.execute("SELECT height, certificate FROM decided ORDER BY height"):
            where = f"{self.path}: decided block {height}"
            if height != len(certs) + 1:
                raise JournalError(f"{where}: expected height {len(certs) + 1}; the journal lost a block")
            try:
                cert = decode(bytes(blob))
            except MessageError as exc:
                raise JournalError(f"{where}: {exc}") from exc
            if not isinstance(cert, CommitCertificate) or cert.proposal.height != height:
                raise JournalError(f"{where}: the stored certificate is not the one for this height")
            prev = certs[-1].proposal.digest if certs else bytes(32)
            if cert.proposal.prev != prev:
                raise JournalError(f"{where}: does not follow block {height - 1}")
            certs.append(cert)
        durable = Durable(row[0], row[1], votes) if row is not None else None
        return durable, certs
