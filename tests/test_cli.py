"""Tests for the `gridtrace` command: help texts, version, packaging, and the init commands.

The commands run as a user runs them: `python -m gridtrace ...` in a subprocess.
"""

from __future__ import annotations

import argparse
import json
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import gridtrace
from edge.config import load_agent_config
from gridtrace.cli import build_parser
from hub.certificates.trust import load_trust
from hub.config import load_hub_config
from protos.signing import key_id, load_private_key, load_public_key

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("sqlalchemy", "numpy", "scipy", "pandapower", "cryptography")


def gridtrace_cli(*args: str, cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "gridtrace", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if check:
        assert proc.returncode == 0, f"gridtrace {' '.join(args)}: {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def gridtrace_many(*runs: tuple[tuple[str, ...], Path]) -> list[subprocess.CompletedProcess]:
    """Run several independent commands at once (keeps this file fast)."""
    procs = [
        (args, subprocess.Popen([sys.executable, "-m", "gridtrace", *args], cwd=cwd,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for args, cwd in runs
    ]
    done = []
    for args, proc in procs:
        out, err = proc.communicate(timeout=60)
        done.append(subprocess.CompletedProcess(args, proc.returncode, out, err))
    return done


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ---------------------------------------------------------------------------
# Help on every command.
# ---------------------------------------------------------------------------


def _walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, (*path, name))


COMMANDS = [path for path, _ in _walk(build_parser())]
# Known gaps, reported with the file and the fix; strict so they are noticed once fixed.
_MISSING_EXAMPLE: dict[tuple[str, ...], str] = {}


def test_command_tree_is_complete():
    expected = {
        (), ("demo",), ("sim",), ("sim", "modbus"), ("edge",), ("edge", "init"), ("edge", "run"),
        ("hub",), ("hub", "init"), ("hub", "serve"), ("hub", "gateway"), ("hub", "gateway", "add"),
        ("hub", "trust"), ("cert",), ("cert", "pull"), ("cert", "verify"),
    }
    assert expected <= set(COMMANDS)


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=_MISSING_EXAMPLE[p]))
        if p in _MISSING_EXAMPLE else p
        for p in COMMANDS
    ],
    ids=lambda p: " ".join(("gridtrace", *p)),
)
def test_help_shows_an_example(path):
    parsers = dict(_walk(build_parser()))
    text = parsers[path].format_help()
    assert "example" in text.lower(), text
    lines = [line.strip() for line in text.splitlines()]
    command = " ".join(("gridtrace", *path))
    examples = [line for line in lines if line.startswith("gridtrace")]
    assert examples, text
    # the example is of this command (or, for a group, of one of its subcommands)
    assert any(line == command or line.startswith(command + " ") for line in examples), examples


def test_version_help_and_usage_via_the_real_command(tmp_path):
    version, help_, bare = gridtrace_many(
        (("--version",), tmp_path), (("edge", "init", "--help"), tmp_path), ((), tmp_path)
    )
    assert version.returncode == 0
    assert version.stdout.strip() == f"gridtrace {gridtrace.__version__}"
    from importlib.metadata import version as dist_version

    assert gridtrace.__version__ == dist_version("gridtrace")

    assert help_.returncode == 0
    assert "example" in help_.stdout.lower()
    assert any(line.strip().startswith("gridtrace edge init") for line in help_.stdout.splitlines())

    assert bare.returncode == 2  # no command: a usage error, not a traceback
    assert "usage: gridtrace" in bare.stderr


# ---------------------------------------------------------------------------
# The light edge install.
# ---------------------------------------------------------------------------


def test_edge_modules_do_not_import_the_hub_stack(tmp_path):
    code = (
        "import sys\n"
        "import edge.agent, edge.cli, edge.poller, edge.uplink, edge.queue\n"
        "import protos.canonical, protos.merkle\n"
        "import hub.certificates.verify, hub.certificates.trust\n"
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"edge imports pulled in: {proc.stdout.strip()}"


def test_edge_run_loads_only_the_agent(tmp_path):
    """`gridtrace edge run` on a gateway carries the agent and the sources its meters
    use, not the simulator, the demo's console, the hub, MQTT or OpenSSL bindings:
    each is MB of resident memory on a small gateway."""
    code = (
        "import sys\n"
        "from gridtrace.cli import build_parser, command_named\n"
        "argv = ['--log-level', 'DEBUG', 'edge', 'run', '--config', 'agent.toml']\n"
        "assert command_named(argv) == 'edge'\n"
        "build_parser(command_named(argv)).parse_args(argv)\n"
        "import edge.agent\n"
        "unwanted = ('firmware_sim', 'gridtrace.demo', 'rich', 'hub', 'paho', 'cryptography', 'sqlalchemy')\n"
        "print(','.join(sorted({m for m in sys.modules for u in unwanted if m == u or m.startswith(u + '.')})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"`edge run` imported: {proc.stdout.strip()}"


def test_unknown_command_still_lists_every_command(tmp_path):
    proc = gridtrace_cli("nosuch", cwd=tmp_path)
    assert proc.returncode == 2
    for name in ("demo", "sim", "edge", "hub", "cert"):
        assert name in proc.stderr


def _requirement_name(req: str) -> str:
    name = req
    for sep in "<>=!~[; ":
        name = name.split(sep)[0]
    return name.strip().lower().replace("_", "-")


def test_pyproject_core_dependencies_are_light():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {_requirement_name(r) for r in project["dependencies"]}
    assert not core & set(HEAVY), core
    extras = {_requirement_name(r) for reqs in project["optional-dependencies"].values() for r in reqs}
    assert "sqlalchemy" in extras  # the hub's stack lives in an extra
    assert project["scripts"]["gridtrace"] == "gridtrace.cli:main"


def test_pyproject_lists_every_package():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    dirs = {name: ROOT / path for name, path in setup.get("package-dir", {}).items()}
    found = set()
    for top in ("gridtrace", "protos", "edge", "hub", "firmware_sim"):
        base = dirs.get(top, ROOT / top)
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join((top, *rel.parts)))
    assert found <= listed, f"not packaged: {sorted(found - listed)}"


# ---------------------------------------------------------------------------
# init, gateway add, trust.
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A hub and a gateway set up with the real commands, once for this module."""
    root = tmp_path_factory.mktemp("site")
    hub = gridtrace_cli("hub", "init", "--dir", "hub", "--chain-id", "substation-7", "--listen",
                        "127.0.0.1:7799", cwd=root)
    edge = gridtrace_cli(
        "edge", "init", "--dir", "gw1", "--gateway-id", "gw1", "--hub", "127.0.0.1:7799",
        "--hub-ca", "hub/tls/ca.pem", "--hub-key", "hub/hub.pub.pem",
        "--meter", "MTR-1=modbus-tcp://127.0.0.1:5020?unit=1",
        "--meter", "MTR-2=modbus-tcp://127.0.0.1:5020?unit=2",
        cwd=root,
    )
    return root, hub, edge


def test_hub_init(site):
    root, hub, _ = site
    assert hub.returncode == 0, hub.stderr
    d = root / "hub"
    assert _mode(d / "hub.key") == 0o600
    load_private_key(d / "hub.key")
    assert (d / "hub.pub.pem").exists()
    assert key_id(load_public_key(d / "hub.pub.pem")) in hub.stdout
    assert (d / "tls" / "ca.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert (d / "tls" / "hub.pem").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert _mode(d / "tls" / "hub.key") == 0o600
    cfg = load_hub_config(d / "hub.toml")
    assert cfg.chain_id == "substation-7"
    assert cfg.listen == "127.0.0.1:7799"
    assert cfg.key == d / "hub.key"
    assert cfg.tls_cert == d / "tls" / "hub.pem"
    assert not cfg.insecure_plaintext
    assert (d / "hub.sqlite").is_file() and (d / "hub.sqlite").stat().st_size > 0
    assert cfg.database_url == f"sqlite:///{(d / 'hub.sqlite').resolve()}"


@pytest.mark.parametrize(("replicas", "verifiers"), [(4, 0), (1, 1)])
def test_chain_init_checks_batches_in_the_server_process_when_replicas_share_a_host(tmp_path, replicas, verifiers):
    """Replicas made by one `chain init` share its --host and so its cores: a verifier process
    each would add a process hop per batch and no parallelism. A lone replica keeps its own."""
    from hub.config import load_hub_config

    done = gridtrace_cli("chain", "init", "--replicas", str(replicas), "--dir", "site", "--chain-id", "sub-7",
                         cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for i in range(replicas):
        assert load_hub_config(tmp_path / "site" / f"hub-{i}" / "hub.toml").verifier_processes == verifiers


def test_hub_init_refuses_to_run_twice_and_bad_chain_ids(site, tmp_path):
    root, _, _ = site
    d = root / "hub"
    before = (d / "hub.key").read_bytes()
    twice, bad_chain = gridtrace_many(
        (("hub", "init", "--dir", ".", "--chain-id", "substation-7"), d),
        (("hub", "init", "--dir", "h", "--chain-id", "sub station", "--insecure"), tmp_path),
    )
    assert twice.returncode == 2
    assert "exists" in twice.stderr
    assert (d / "hub.key").read_bytes() == before
    assert bad_chain.returncode == 2
    assert "--chain-id" in bad_chain.stderr and "not a valid identifier" in bad_chain.stderr
    assert not (tmp_path / "h" / "hub.key").exists()


def test_python_m_from_the_directory_holding_hub_dir(site):
    root, _, _ = site
    proc = gridtrace_cli("hub", "init", "--dir", "hub", "--chain-id", "substation-7", cwd=root)
    assert "ImportError" not in proc.stderr
    assert proc.returncode == 2 and "exists" in proc.stderr


def test_edge_init(site):
    root, _, edge = site
    assert edge.returncode == 0, edge.stderr
    d = root / "gw1"
    assert _mode(d / "gateway.key") == 0o600
    key = load_private_key(d / "gateway.key")
    pub = load_public_key(d / "gateway.pub.pem")
    assert key_id(pub) == key_id(key.public_key)
    assert key_id(pub) in edge.stdout
    assert "gridtrace hub gateway add gw1" in edge.stdout  # tells what to do next
    assert (d / "hub-ca.pem").read_bytes() == (root / "hub" / "tls" / "ca.pem").read_bytes()
    assert (d / "hub.pub.pem").read_bytes() == (root / "hub" / "hub.pub.pem").read_bytes()
    cfg = load_agent_config(d / "agent.toml")
    assert cfg.gateway_id == "gw1"
    assert cfg.key == d / "gateway.key"
    assert cfg.uplink.hub == "127.0.0.1:7799"
    assert cfg.uplink.tls_ca == d / "hub-ca.pem"
    assert cfg.uplink.hub_public_key == d / "hub.pub.pem"
    assert not cfg.uplink.insecure_plaintext
    assert [(m.id, m.source) for m in cfg.meters] == [
        ("MTR-1", "modbus-tcp://127.0.0.1:5020?unit=1"),
        ("MTR-2", "modbus-tcp://127.0.0.1:5020?unit=2"),
    ]


def test_edge_init_refuses_to_run_twice(site):
    root, _, _ = site
    d = root / "gw1"
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    proc = gridtrace_cli(
        "edge", "init", "--dir", "gw1", "--gateway-id", "gw1", "--hub", "127.0.0.1:7799",
        "--hub-ca", "hub/tls/ca.pem", "--hub-key", "hub/hub.pub.pem", "--meter", "MTR-9=modbus-tcp://x:502?unit=9",
        cwd=root,
    )
    assert proc.returncode == 2
    assert "exists" in proc.stderr
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_edge_init_with_umask_000(tmp_path):
    (tmp_path / "hub.pub.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAfFYdZLtQbnFysw9wt6XMLQNhl24askPRea14NjmFHKc=\n-----END PUBLIC KEY-----\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c",
         "import os, sys; os.umask(0); from gridtrace.cli import main; sys.exit(main(sys.argv[1:]))",
         "edge", "init", "--dir", "gw", "--gateway-id", "gw", "--hub", "h:1", "--insecure",
         "--hub-key", "hub.pub.pem", "--meter", "M=modbus-tcp://h:502?unit=1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert _mode(tmp_path / "gw" / "gateway.key") == 0o600
    cfg = load_agent_config(tmp_path / "gw" / "agent.toml")
    assert cfg.uplink.insecure_plaintext


def test_gateway_add_then_trust(site):
    root, _, _ = site
    add = gridtrace_cli("hub", "gateway", "add", "gw1", "--public-key", "gw1/gateway.pub.pem",
                        "--config", "hub/hub.toml", cwd=root, check=True)
    gw_key_id = key_id(load_public_key(root / "gw1" / "gateway.pub.pem"))
    assert gw_key_id in add.stdout and "registered" in add.stdout
    again = gridtrace_cli("hub", "gateway", "add", "gw1", "--public-key", "gw1/gateway.pub.pem",
                          "--config", "hub/hub.toml", cwd=root, check=True)
    assert "already registered" in again.stdout

    trust = gridtrace_cli("hub", "trust", "--config", "hub/hub.toml", "-o", "trust.json", cwd=root, check=True)
    assert "trust.json" in trust.stdout
    t = load_trust(root / "trust.json")
    assert gw_key_id in t.gateways["gw1"]
    hub_key_id = key_id(load_public_key(root / "hub" / "hub.pub.pem"))
    assert hub_key_id in t.chains["substation-7"].replicas
    assert t.chains["substation-7"].quorum == 1
    doc = json.loads((root / "trust.json").read_text())
    assert doc["gateways"]["gw1"][0]["key_id"] == gw_key_id
    assert "PRIVATE" not in (root / "trust.json").read_text()


def test_gateway_add_bad_input(site):
    root, _, _ = site
    bad_id, missing_key = gridtrace_many(
        (("hub", "gateway", "add", "gw 2", "--public-key", "gw1/gateway.pub.pem", "--config", "hub/hub.toml"), root),
        (("hub", "gateway", "add", "gw2", "--public-key", "gw1/missing.pem", "--config", "hub/hub.toml"), root),
    )
    assert bad_id.returncode == 2 and "not a valid identifier" in bad_id.stderr
    assert missing_key.returncode == 2 and "missing.pem" in missing_key.stderr


def test_bad_meter_value_exits_2(tmp_path):
    meters = ["MTR-1", "=modbus-tcp://h:502?unit=1"]
    for i, meter in enumerate(meters):
        (tmp_path / str(i)).mkdir()
    procs = gridtrace_many(*[
        (("edge", "init", "--dir", "gw", "--gateway-id", "gw", "--hub", "h:1", "--insecure",
          "--hub-key", "hub.pub.pem", "--meter", meter), tmp_path / str(i))
        for i, meter in enumerate(meters)
    ])
    for i, (meter, proc) in enumerate(zip(meters, procs)):
        assert proc.returncode == 2, meter
        assert "--meter" in proc.stderr and repr(meter) in proc.stderr and "ID=URL" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert not (tmp_path / str(i) / "gw" / "gateway.key").exists()


def test_missing_hub_ca_exits_2(tmp_path):
    proc = gridtrace_cli("edge", "init", "--dir", "gw", "--gateway-id", "gw", "--hub", "h:1",
                         "--hub-key", "hub.pub.pem", "--meter", "M=modbus-tcp://h:502?unit=1", cwd=tmp_path)
    assert proc.returncode == 2 and "--hub-ca is required unless --insecure" in proc.stderr
    assert not (tmp_path / "gw" / "gateway.key").exists()


def test_bad_ids_are_refused_before_anything_is_written(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    common = ("edge", "init", "--dir", "gw", "--hub", "h:1", "--insecure", "--hub-key", "../hub.pub.pem")
    (tmp_path / "hub.pub.pem").write_text(
        "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAfFYdZLtQbnFysw9wt6XMLQNhl24askPRea14NjmFHKc=\n-----END PUBLIC KEY-----\n"
    )
    bad_gw, bad_meter = gridtrace_many(
        ((*common, "--gateway-id", "gw 1", "--meter", "M=modbus-tcp://h:502?unit=1"), tmp_path / "a"),
        ((*common, "--gateway-id", "gw", "--meter", "MTR 1=modbus-tcp://h:502?unit=1"), tmp_path / "b"),
    )
    for proc, option, d in ((bad_gw, "--gateway-id", "a"), (bad_meter, "--meter", "b")):
        assert proc.returncode == 2, proc.stdout
        assert option in proc.stderr and "not a valid identifier" in proc.stderr
        assert not (tmp_path / d / "gw" / "gateway.key").exists()


def test_config_error_exits_2_naming_file_and_key(site, tmp_path):
    root, _, _ = site
    text = (root / "gw1" / "agent.toml").read_text().replace("max_entries = 500", "max_entries = -5")
    bad = tmp_path / "agent.toml"
    bad.write_text(text)
    bad_hub = tmp_path / "hub.toml"
    bad_hub.write_text((root / "hub" / "hub.toml").read_text() + "\n[concensus]\n")  # a misspelt table
    edge, hub = gridtrace_many(
        (("edge", "run", "--config", str(bad)), tmp_path),
        (("hub", "serve", "--config", str(bad_hub)), tmp_path),
    )
    assert edge.returncode == 2
    assert "config error" in edge.stderr
    assert str(bad) in edge.stderr and "[batching] max_entries" in edge.stderr and "must be > 0" in edge.stderr
    assert "Traceback" not in edge.stderr
    assert hub.returncode == 2
    assert str(bad_hub) in hub.stderr and "unknown table [concensus]" in hub.stderr
    assert "Traceback" not in hub.stderr
