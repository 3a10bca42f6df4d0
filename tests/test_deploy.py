"""deploy/: the systemd units pass `systemd-analyze verify` and keep their hardening; the
Containerfile runs the hub as a non-root user with a health check; the compose file's
services, health checks, ports and database agree with deploy/hub.example.toml.

`docker build` needs base images from a registry this machine cannot reach, so the
container files are checked statically."""

from __future__ import annotations

import configparser
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from gridtrace.cli import main as gridtrace_main
from systemtools import require_tool

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
UNITS = {"hub": DEPLOY / "gridtrace-hub.service", "agent": DEPLOY / "gridtrace-agent.service"}
HARDENING = {
    "NoNewPrivileges": "yes", "CapabilityBoundingSet": "", "AmbientCapabilities": "", "ProtectSystem": "strict",
    "ProtectHome": "yes", "PrivateTmp": "yes", "ProtectKernelTunables": "yes", "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes", "ProtectControlGroups": "yes", "ProtectClock": "yes", "ProtectHostname": "yes",
    "ProtectProc": "invisible", "RestrictNamespaces": "yes", "RestrictRealtime": "yes", "RestrictSUIDSGID": "yes",
    "RemoveIPC": "yes", "LockPersonality": "yes", "SystemCallArchitectures": "native",
    "SystemCallFilter": "@system-service", "UMask": "0077",
}


def _unit(path: Path) -> dict[str, str]:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # keys are case-sensitive in systemd
    parser.read_string(path.read_text())
    return dict(parser["Service"])


def _venv_gridtrace() -> Path:
    exe = Path(sys.executable).parent / "gridtrace"
    assert exe.exists(), f"{exe} missing: install the project (make install)"
    return exe


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_verifies_with_the_installed_gridtrace(tmp_path, name):
    analyze = require_tool("systemd-analyze", "systemd", "the units in deploy/ are checked with systemd-analyze verify")
    text = UNITS[name].read_text()
    assert "/opt/gridtrace/bin/gridtrace" in text
    copy = tmp_path / UNITS[name].name
    copy.write_text(text.replace("/opt/gridtrace/bin/gridtrace", str(_venv_gridtrace())))
    proc = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr


@pytest.mark.parametrize("name", sorted(UNITS))
def test_systemd_unit_runs_a_real_command_as_a_dedicated_user_with_hardening(name):
    svc = _unit(UNITS[name])
    assert svc["User"] not in ("root", "") and svc["User"] == svc["Group"]
    for key, value in HARDENING.items():
        assert svc.get(key) == value, f"{UNITS[name].name}: {key}={svc.get(key)!r}, expected {value!r}"
    # cffi (PyNaCl) may need W+X pages: not set until shown to work
    assert "MemoryDenyWriteExecute" not in svc
    state = f"/var/lib/{svc['StateDirectory']}"
    assert svc["WorkingDirectory"] == state and svc["ReadWritePaths"] == state
    argv = shlex.split(svc["ExecStart"])
    assert argv[0] == "/opt/gridtrace/bin/gridtrace"
    config = Path(argv[argv.index("--config") + 1])
    assert config.parent == Path(state)
    # the command line parses with the real CLI
    args = argv[1:]
    with pytest.raises(SystemExit) as done:
        gridtrace_main([*args, "--help"])
    assert done.value.code == 0


def test_hub_unit_keeps_devices_and_users_private_and_agent_keeps_serial_ports():
    hub, agent = _unit(UNITS["hub"]), _unit(UNITS["agent"])
    assert hub["PrivateDevices"] == "yes" and hub["PrivateUsers"] == "yes"
    assert agent["PrivateDevices"] == "no" and "PrivateUsers" not in agent
    assert agent["SupplementaryGroups"] == "dialout"


def test_hub_unit_refuses_to_start_on_a_database_behind_the_schema(tmp_path, capsys):
    """The hub unit's ExecStartPre, run as written against a hub directory: exit 0 at the
    schema head, non-zero (so systemd does not start `hub serve`) when a migration is pending."""
    from hub.storage import migrate
    from hub.storage.engine import engine_for
    from hubharness import init_hub

    svc = _unit(UNITS["hub"])
    pre, serve = shlex.split(svc["ExecStartPre"]), shlex.split(svc["ExecStart"])
    assert pre[0] == serve[0] == "/opt/gridtrace/bin/gridtrace"
    assert pre[1:4] == ["hub", "migrate", "--config"] and "--status" in pre
    assert pre[pre.index("--config") + 1] == serve[serve.index("--config") + 1]

    cfg = init_hub(tmp_path / "hub")
    argv = [str(cfg.path) if a == serve[serve.index("--config") + 1] else a for a in pre[1:]]
    assert gridtrace_main(argv) == 0
    engine = engine_for(cfg.database_url)
    migrate.downgrade(engine, "-1")
    capsys.readouterr()
    assert gridtrace_main(argv) != 0
    assert "pending: " + migrate.head_revision() in capsys.readouterr().out
    migrate.upgrade(engine)
    engine.dispose()
    assert gridtrace_main(argv) == 0


# ---------------------------------------------------------------------------
# Container image and compose.
# ---------------------------------------------------------------------------


def _containerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) of deploy/Containerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Containerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_containerfile_runs_the_hub_as_non_root_with_a_health_check():
    steps = _containerfile()
    final = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    froms = [a for w, a in steps if w == "FROM"]
    assert len(froms) == 2 and all(a.startswith("python:3.11-slim") for a in froms)
    user = [a for w, a in final if w == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert any(w == "RUN" and f"useradd --system --uid 10001" in a and user[-1] in a for w, a in final)
    health = [a for w, a in final if w == "HEALTHCHECK"]
    assert len(health) == 1
    health_cmd = eval(health[0].split("CMD", 1)[1].strip())  # noqa: S307 - a JSON-style list in our own file
    entry = eval(dict(final)["ENTRYPOINT"])  # noqa: S307
    cmd = eval(dict(final)["CMD"])  # noqa: S307
    assert health_cmd[:3] == ["gridtrace", "hub", "health"]
    assert entry == ["gridtrace"] and cmd[:2] == ["hub", "serve"]
    assert cmd[cmd.index("--config") + 1] == health_cmd[health_cmd.index("--config") + 1]
    assert dict(final)["WORKDIR"] == "/var/lib/gridtrace-hub"
    exposed = {int(p) for w, a in final if w == "EXPOSE" for p in a.split()}
    example = load_example_ports()
    assert exposed == set(example.values())
    assert any(w == "RUN" and '"gridtrace[hub]"' in a for w, a in final)
    # the build stage can compile the native Merkle module; the image it runs in carries no compiler
    assert any(w == "COPY" and "setup.py" in a.split() for w, a in steps)
    assert any(w == "RUN" and "libssl-dev" in a for w, a in steps) and not any("gcc" in a for _, a in final)
    for w, a in steps:  # everything the wheel is built from is copied
        if w == "COPY" and "--from" not in a:
            for src in a.split()[:-1]:
                assert (DEPLOY.parent / src).exists(), src


def load_example_ports() -> dict[str, int]:
    doc = tomllib.loads((DEPLOY / "hub.example.toml").read_text())
    return {
        "grpc": int(doc["server"]["listen"].rpartition(":")[2]),
        "metrics": int(doc["metrics"]["listen"].rpartition(":")[2]),
    }


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_hub_postgres_and_mosquitto_with_health_checks():
    services = _compose()["services"]
    assert set(services) == {"hub", "postgres", "mosquitto"}
    for name, svc in services.items():
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, name
    assert services["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    hub = services["hub"]
    assert hub["healthcheck"]["test"][1:4] == ["gridtrace", "hub", "health"]
    assert hub["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert hub["build"]["dockerfile"] == "deploy/Containerfile"
    assert (DEPLOY / hub["build"]["context"] / hub["build"]["dockerfile"]).resolve() == DEPLOY / "Containerfile"
    assert int(hub["stop_grace_period"].rstrip("s")) >= 60  # the unit's TimeoutStopSec
    # mounted files exist
    for svc in services.values():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./") and not src.endswith(".passwd"):
                assert (DEPLOY / src).exists(), src


def test_compose_ports_and_database_match_the_example_config(tmp_path):
    compose = _compose()
    hub, pg = compose["services"]["hub"], compose["services"]["postgres"]
    ports = load_example_ports()
    published = {}
    for spec in hub["ports"]:
        parts = str(spec).split(":")
        published[int(parts[-1])] = parts[0] if len(parts) == 3 else "0.0.0.0"
    assert set(published) == set(ports.values())
    assert published[ports["metrics"]] == "127.0.0.1", "metrics are plain HTTP: publish on loopback only"
    # the config the hub reads is the example
    mounts = {v.split(":")[1]: v.split(":")[0] for v in hub["volumes"]}
    config_path = hub["healthcheck"]["test"][hub["healthcheck"]["test"].index("--config") + 1]
    assert mounts[config_path] == "./hub.example.toml"
    # its database is this compose file's postgres, with no password in the file
    doc = tomllib.loads((DEPLOY / "hub.example.toml").read_text())
    url = doc["hub"]["database"]
    m = re.fullmatch(r"postgresql\+psycopg://(\w+)@(\w+):(\d+)/(\w+)", url)
    assert m, url
    user, host, port, db = m.groups()
    assert host == "postgres" and port == "5432"
    assert (user, db) == (pg["environment"]["POSTGRES_USER"], pg["environment"]["POSTGRES_DB"])
    assert "PGPASSWORD" in hub["environment"] and "${" in hub["environment"]["PGPASSWORD"]
    assert "${" in pg["environment"]["POSTGRES_PASSWORD"]
    # and the hub's health check reaches the hub's own listen port
    from hub.config import client_address

    assert client_address(doc["server"]["listen"]) == f"127.0.0.1:{ports['grpc']}"


def test_mosquitto_config_requires_logins():
    conf = dict(
        line.split(None, 1) for line in (DEPLOY / "mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    )
    assert conf["allow_anonymous"] == "false" and conf["listener"] == "1883"
    services = _compose()["services"]
    assert services["mosquitto"]["ports"] == ["1883:1883"]
    assert any(v.endswith(conf["password_file"] + ":ro") for v in services["mosquitto"]["volumes"])
