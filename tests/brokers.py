"""A real mosquitto broker for tests: started per test on a free local port, stopped after.

Fixtures:

* ``mosquitto``: anonymous access, no persistence (a restart loses sessions, like a broker
  whose disk was wiped; the agent must resubscribe by itself).
* ``mosquitto_auth``: the same, but only user ``MOSQUITTO_USER`` with password
  ``MOSQUITTO_PASSWORD`` may connect (needs ``mosquitto_passwd``).

Both yield a `Mosquitto` whose `stop()` / `start()` simulate a broker outage on the same
port. Without mosquitto the tests are skipped on a workstation and fail under CI=true, so a
CI image that lost the broker cannot pass by skipping.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from systemtools import require_tool

__all__ = ["MOSQUITTO_PASSWORD", "MOSQUITTO_USER", "Mosquitto", "mosquitto", "mosquitto_auth"]

MOSQUITTO_USER = "meter-reader"
MOSQUITTO_PASSWORD = "s3cret:with@odd/chars"

_START_TIMEOUT_S = 10.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """One mosquitto process serving 127.0.0.1:`port` with a config written to `directory`."""

    host = "127.0.0.1"

    def __init__(self, directory: Path, *, password_file: Path | None = None) -> None:
        self.binary = require_tool("mosquitto", "mosquitto", "the MQTT tests need a broker", "/usr/sbin/mosquitto")
        self.directory = directory
        self.port = _free_port()
        self.config = directory / "mosquitto.conf"
        self.log = directory / "mosquitto.log"
        lines = [
            f"listener {self.port} {self.host}",
            "persistence false",
            f"allow_anonymous {'false' if password_file else 'true'}",
            # Sessions of disconnected clients must keep QoS 1 messages (the default, said
            # explicitly because the tests depend on it).
            "max_queued_messages 1000",
        ]
        if password_file is not None:
            lines.append(f"password_file {password_file}")
        if os.geteuid() == 0:
            # As root, mosquitto would switch to user "mosquitto", who cannot read pytest's
            # private temporary directory.
            lines.append("user root")
        self.config.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, topic: str, **params: str) -> str:
        """An mqtt:// URL for `topic` on this broker (no credentials)."""
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"mqtt://{self.address}/{topic}" + (f"?{query}" if query else "")

    def start(self) -> None:
        if self._process is not None:
            raise RuntimeError("mosquitto is already running")
        log = self.log.open("ab")
        try:
            self._process = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RuntimeError(f"mosquitto exited with {code}:\n{self.log_text()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on {self.address}:\n{self.log_text()}")
                time.sleep(0.02)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_text(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_auth(tmp_path: Path) -> Iterator[Mosquitto]:
    tool = require_tool("mosquitto_passwd", "mosquitto", "the MQTT login tests need it", "/usr/bin/mosquitto_passwd")
    password_file = tmp_path / "passwords"
    subprocess.run(
        [tool, "-b", "-c", str(password_file), MOSQUITTO_USER, MOSQUITTO_PASSWORD],
        check=True,
        capture_output=True,
    )
    password_file.chmod(0o600)
    broker = Mosquitto(tmp_path, password_file=password_file)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
