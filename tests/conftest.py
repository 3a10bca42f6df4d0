import sys
from pathlib import Path

# Test support modules (hubharness, chainfixture) live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))

# Fixtures that start real services and devices for the tests that name them: `serial_pair`
# (socat pty pair standing in for an RS-485 line), `mosquitto` and `mosquitto_auth` (brokers),
# `postgres_server` and `database_url` (each storage test on SQLite and on a real PostgreSQL),
# `q` and `qpath` (a durable queue file for the tests of edge/queue.py).
pytest_plugins = ("serialpair", "brokers", "pgserver", "queuefixtures")
