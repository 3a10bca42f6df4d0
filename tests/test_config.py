"""Tests for the TOML config files: edge/config.py, hub/config.py, gridtrace/tomlconfig.py.

Every bad setting must give a ConfigError whose message names the file and the
table and key that are wrong, so a field engineer can fix it without the code.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from edge.config import ConfigError, load_agent_config, render_agent_config
from gridtrace.tomlconfig import ConfigError as BaseConfigError
from hub.config import ConfigError as HubConfigError
from hub.config import load_hub_config, render_hub_config

METERS = [("MTR-1", "modbus-tcp://127.0.0.1:5020?unit=1"), ("MTR-2", "modbus-tcp://127.0.0.1:5020?unit=2")]


def test_one_config_error_type():
    assert ConfigError is BaseConfigError is HubConfigError
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------
# The agent's config.
# ---------------------------------------------------------------------------


def _agent(tmp_path: Path, text: str | None = None, **kw) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text if text is not None else render_agent_config("gw1", "127.0.0.1:7700", METERS, **kw),
                    encoding="utf-8")
    return path


def _sub(text: str, pattern: str, replacement: str) -> str:
    """Replace one line of the rendered config (the pattern must match exactly once)."""
    new, n = re.subn(pattern, lambda _: replacement, text, count=0, flags=re.MULTILINE)
    assert n == 1, f"{pattern!r} matched {n} times"
    return new


def _rendered() -> str:
    return render_agent_config("gw1", "127.0.0.1:7700", METERS)


def test_meter_source_and_register_map_are_checked_at_load(tmp_path):
    path = _agent(tmp_path)
    text = path.read_text()
    bad_url = tmp_path / "bad_url.toml"
    bad_url.write_text(text.replace("?unit=1", "?unit=300", 1))
    with pytest.raises(ConfigError, match=r"\[meters #1\] source: .*unit 300"):
        load_agent_config(bad_url)
    bad_map = tmp_path / "bad_map.toml"
    bad_map.write_text(text.replace('register_map = "eastron_sdm630"', 'register_map = "sdm999"', 1))
    with pytest.raises(ConfigError, match=r"\[meters #1\] register_map: .*sdm999"):
        load_agent_config(bad_map)
    missing = tmp_path / "missing_map.toml"
    missing.write_text(text.replace('register_map = "eastron_sdm630"', 'register_map = "maps/none.toml"', 1))
    with pytest.raises(ConfigError, match=r"register_map: .*none.toml"):
        load_agent_config(missing)


def test_rendered_agent_config_loads_back(tmp_path):
    path = _agent(tmp_path)
    cfg = load_agent_config(path)
    assert cfg.path == path
    assert cfg.gateway_id == "gw1"
    # relative paths are relative to the config file
    assert cfg.key == tmp_path / "gateway.key"
    assert cfg.queue == tmp_path / "queue.sqlite"
    assert cfg.uplink.hub == "127.0.0.1:7700"
    assert cfg.uplink.tls_ca == tmp_path / "hub-ca.pem"
    assert cfg.uplink.tls_server_name is None
    assert cfg.uplink.hub_public_key == tmp_path / "hub.pub.pem"
    assert cfg.uplink.insecure_plaintext is False
    assert cfg.uplink.max_in_flight == 8
    assert cfg.uplink.reconnect_max_s == 30.0
    assert (cfg.batching.max_entries, cfg.batching.max_age_s, cfg.batching.gap_report_s) == (500, 2.0, 60.0)
    assert [(m.id, m.source) for m in cfg.meters] == METERS
    assert all(m.register_map == "eastron_sdm630" and m.interval_s == 1.0 for m in cfg.meters)


@pytest.mark.parametrize("interval", [0.25, 2, 1e-3, 3600.0])
def test_rendered_agent_config_options(tmp_path, interval):
    # A register map of the engineer's own, next to the config file.
    import edge

    (tmp_path / "maps").mkdir()
    builtin = Path(edge.__file__).parent / "registermaps" / "eastron_sdm630.toml"
    (tmp_path / "maps" / "other_map.toml").write_text(builtin.read_text())
    path = _agent(tmp_path, tls_ca="/etc/gridtrace/ca.pem", hub_public_key="keys/hub.pem",
                  insecure_plaintext=True, register_map="maps/other_map.toml", interval_s=interval)
    cfg = load_agent_config(path)
    assert cfg.uplink.tls_ca == Path("/etc/gridtrace/ca.pem")
    assert cfg.uplink.hub_public_key == tmp_path / "keys" / "hub.pem"
    assert cfg.uplink.insecure_plaintext is True
    assert all(m.register_map == "maps/other_map.toml" and m.interval_s == float(interval) for m in cfg.meters)
    assert all(m.regmap.model == "SDM630" for m in cfg.meters)
    assert all(isinstance(m.interval_s, float) for m in cfg.meters)


def test_insecure_plaintext_needs_no_tls_ca(tmp_path):
    text = _sub(_rendered(), r"^tls_ca = .*$", "")
    text = _sub(text, r"^insecure_plaintext = .*$", "insecure_plaintext = true")
    cfg = load_agent_config(_agent(tmp_path, text))
    assert cfg.uplink.tls_ca is None and cfg.uplink.insecure_plaintext


def test_minimal_agent_config_uses_defaults(tmp_path):
    text = """
[gateway]
id = "gw-min"
[uplink]
hub = "hub.example.net:7700"
tls_ca = "ca.pem"
hub_public_key = "hub.pub.pem"
tls_server_name = "hub7"
[[meters]]
id = "M1"
source = "modbus-tcp://10.0.0.5:502?unit=1"
"""
    cfg = load_agent_config(_agent(tmp_path, text))
    assert cfg.gateway_id == "gw-min"
    assert cfg.uplink.tls_server_name == "hub7"
    assert cfg.batching.max_entries == 500
    assert cfg.meters[0].interval_s == 1.0 and cfg.meters[0].register_map == "eastron_sdm630"


def _expect(path: Path, *parts: str):
    """Load and expect a ConfigError naming the file and each part."""
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    msg = str(err.value)
    assert str(path) in msg, msg
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


def test_unknown_table(tmp_path):
    _expect(_agent(tmp_path, _rendered() + "\n[metres]\nid = 1\n"), "unknown table [metres]")


def test_unknown_top_level_key(tmp_path):
    _expect(_agent(tmp_path, "colour = 'blue'\n" + _rendered()), "colour")


@pytest.mark.parametrize(
    "table,line,key",
    [
        ("gateway", 'queue = "queue.sqlite"', "qeueu"),
        ("uplink", 'hub = "127.0.0.1:7700"', "hub_adress"),
        ("batching", "max_entries = 500", "max_entry"),
    ],
)
def test_unknown_key(tmp_path, table, line, key):
    text = _rendered().replace(line, f"{line}\n{key} = 1", 1)
    _expect(_agent(tmp_path, text), f"[{table}] {key}", "unknown setting")


def test_unknown_key_in_meter(tmp_path):
    text = _rendered().replace('id = "MTR-2"', 'id = "MTR-2"\nunit = 2', 1)
    _expect(_agent(tmp_path, text), "[meters #2] unit", "unknown setting")


@pytest.mark.parametrize(
    "pattern,replacement,where",
    [
        (r"^max_entries = .*$", 'max_entries = "500"', "[batching] max_entries"),
        (r"^max_entries = .*$", "max_entries = 500.0", "[batching] max_entries"),
        (r"^max_entries = .*$", "max_entries = true", "[batching] max_entries"),
        (r"^max_age_s = .*$", 'max_age_s = "2s"', "[batching] max_age_s"),
        (r"^insecure_plaintext = .*$", 'insecure_plaintext = "no"', "[uplink] insecure_plaintext"),
        (r"^insecure_plaintext = .*$", "insecure_plaintext = 0", "[uplink] insecure_plaintext"),
        (r"^hub = .*$", "hub = 7700", "[uplink] hub"),
        (r"^max_in_flight = .*$", "max_in_flight = [8]", "[uplink] max_in_flight"),
        (r'^id = "gw1"$', "id = 1", "[gateway] id"),
    ],
)
def test_wrong_type(tmp_path, pattern, replacement, where):
    _expect(_agent(tmp_path, _sub(_rendered(), pattern, replacement)), where, "must be")


def test_wrong_type_in_meter(tmp_path):
    text = _rendered().replace('source = "modbus-tcp://127.0.0.1:5020?unit=2"', "source = 2", 1)
    _expect(_agent(tmp_path, text), "[meters #2] source", "must be str")


def test_table_of_wrong_shape(tmp_path):
    text = "gateway = 5\n" + _rendered()[_rendered().index("[uplink]"):]
    _expect(_agent(tmp_path, text), "[gateway] must be a table")
    text = _rendered().replace("[[meters]]", "[[meters]]\n[meters.x]", 1)
    _expect(_agent(tmp_path, text), "[meters #1] x", "unknown setting")


@pytest.mark.parametrize(
    "pattern,replacement,where",
    [
        (r"^interval_s = 1.0$", "interval_s = -1.0", "[meters #1] interval_s"),
        (r"^interval_s = 1.0$", "interval_s = 0", "[meters #1] interval_s"),
        (r"^max_age_s = .*$", "max_age_s = -2.0", "[batching] max_age_s"),
        (r"^gap_report_s = .*$", "gap_report_s = 0.0", "[batching] gap_report_s"),
        (r"^max_entries = .*$", "max_entries = -1", "[batching] max_entries"),
        (r"^max_in_flight = .*$", "max_in_flight = 0", "[uplink] max_in_flight"),
        (r"^reconnect_max_s = .*$", "reconnect_max_s = -30.0", "[uplink] reconnect_max_s"),
    ],
)
def test_not_positive(tmp_path, pattern, replacement, where):
    text = _rendered()
    if "interval_s" in pattern:  # only the first meter
        text = text.replace("interval_s = 1.0", replacement, 1)
    else:
        text = _sub(text, pattern, replacement)
    _expect(_agent(tmp_path, text), where, "must be > 0")


def test_duplicate_meter_id(tmp_path):
    text = _rendered().replace('id = "MTR-2"', 'id = "MTR-1"', 1)
    _expect(_agent(tmp_path, text), "[meters #2] id", "'MTR-1' is configured twice")


def test_no_meters(tmp_path):
    text = _rendered().split("[[meters]]")[0]
    _expect(_agent(tmp_path, text), "[[meters]]")
    text = _rendered().split("[[meters]]")[0] + "[meters]\nid = 'MTR-1'\nsource = 'x'\n"
    _expect(_agent(tmp_path, text), "[[meters]]")


def test_missing_tls_ca_without_insecure_plaintext(tmp_path):
    text = _sub(_rendered(), r"^tls_ca = .*$", "")
    _expect(_agent(tmp_path, text), "[uplink] tls_ca", "missing", "insecure_plaintext")
    text = _sub(_rendered(), r"^tls_ca = .*$", 'tls_ca = ""')
    _expect(_agent(tmp_path, text), "[uplink] tls_ca", "missing")


@pytest.mark.parametrize("key,drop", [("[uplink] hub", r"^hub = .*$"), ("[gateway] id", r'^id = "gw1"$'),
                                       ("[uplink] hub_public_key", r"^hub_public_key = .*$")])
def test_missing_required_key(tmp_path, key, drop):
    _expect(_agent(tmp_path, _sub(_rendered(), drop, "")), key, "missing")


def test_missing_meter_source(tmp_path):
    text = _rendered().replace('source = "modbus-tcp://127.0.0.1:5020?unit=1"\n', "", 1)
    _expect(_agent(tmp_path, text), "[meters #1] source", "missing")


@pytest.mark.parametrize("bad", ["gw 1", "-gw", "gw;1", "", "x" * 129, "gw\\u00e9"])
def test_bad_gateway_id_characters(tmp_path, bad):
    _expect(_agent(tmp_path, _sub(_rendered(), r'^id = "gw1"$', f'id = "{bad}"')), "[gateway] id",
            "not a valid identifier")


@pytest.mark.parametrize("bad", ["MTR 2", "MTR/2;", ".MTR"])
def test_bad_meter_id_characters(tmp_path, bad):
    text = _rendered().replace('id = "MTR-2"', f'id = "{bad}"', 1)
    _expect(_agent(tmp_path, text), "[meters #2] id", "not a valid identifier")


@pytest.mark.parametrize(
    "text",
    [
        "[gateway\nid = 'gw1'\n",
        "[gateway]\nid = gw1\n",
        "[gateway]\nid = 'gw1'\nid = 'gw2'\n",
        '[gateway]\nid = "unterminated\n',
    ],
)
def test_invalid_toml(tmp_path, text):
    _expect(_agent(tmp_path, text), "not valid TOML")


def test_missing_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read") as err:
        load_agent_config(path)
    assert str(path) in str(err.value)


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "agent.toml"
    path.write_bytes(_rendered().replace("# Relative", "# Zähler: relative").encode("latin-1"))
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    assert str(path) in str(err.value)


# ---------------------------------------------------------------------------
# The hub's config.
# ---------------------------------------------------------------------------


def _hub(tmp_path: Path, text: str | None = None, tls: bool = True, insecure: bool = False) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(text if text is not None else render_hub_config("substation-7", "0.0.0.0:7700", insecure),
                    encoding="utf-8")
    if tls:
        (tmp_path / "tls").mkdir(exist_ok=True)
        (tmp_path / "tls" / "hub.pem").write_text("cert")
        (tmp_path / "tls" / "hub.key").write_text("key")
    return path


def _hub_rendered(insecure: bool = False) -> str:
    return render_hub_config("substation-7", "0.0.0.0:7700", insecure)


def _expect_hub(path: Path, *parts: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_hub_config(path)
    msg = str(err.value)
    assert str(path) in msg, msg
    for p in parts:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


def test_rendered_hub_config_loads_back(tmp_path):
    path = _hub(tmp_path)
    cfg = load_hub_config(path)
    assert cfg.path == path
    assert cfg.chain_id == "substation-7"
    assert cfg.key == tmp_path / "hub.key"
    assert cfg.listen == "0.0.0.0:7700"
    assert cfg.tls_cert == tmp_path / "tls" / "hub.pem"
    assert cfg.tls_key == tmp_path / "tls" / "hub.key"
    assert cfg.insecure_plaintext is False
    assert cfg.block_interval_s == 2.0
    assert cfg.max_batches_per_block == 10_000
    assert cfg.max_group_commit == 256


def test_database_path_relative_to_config_becomes_absolute_sqlite_url(tmp_path, monkeypatch):
    path = _hub(tmp_path)
    expected = f"sqlite:///{(tmp_path / 'hub.sqlite').resolve()}"
    assert load_hub_config(path).database_url == expected
    # also when the config path itself is relative and the process runs elsewhere
    monkeypatch.chdir(tmp_path.parent)
    cfg = load_hub_config(Path(tmp_path.name) / "hub.toml")
    assert cfg.database_url == expected
    assert cfg.database_url.startswith("sqlite:////")  # sqlite:/// + an absolute path
    # a subdirectory
    text = _hub_rendered().replace('database = "hub.sqlite"', 'database = "data/chain.db"')
    cfg = load_hub_config(_hub(tmp_path, text))
    assert cfg.database_url == f"sqlite:///{(tmp_path / 'data' / 'chain.db').resolve()}"


def test_database_absolute_path_and_url(tmp_path):
    text = _hub_rendered().replace('database = "hub.sqlite"', 'database = "/var/lib/gridtrace/hub.sqlite"')
    assert load_hub_config(_hub(tmp_path, text)).database_url == "sqlite:////var/lib/gridtrace/hub.sqlite"
    url = "postgresql+psycopg://hub:secret@db.example.net/gridtrace"
    text = _hub_rendered().replace('database = "hub.sqlite"', f'database = "{url}"')
    assert load_hub_config(_hub(tmp_path, text)).database_url == url


@pytest.mark.parametrize("missing", ["hub.pem", "hub.key"])
def test_missing_tls_files_when_not_insecure(tmp_path, missing):
    path = _hub(tmp_path)
    (tmp_path / "tls" / missing).unlink()
    key = "tls_cert" if missing == "hub.pem" else "tls_key"
    msg = _expect_hub(path, f"[server] {key}", "does not exist", "insecure_plaintext")
    assert str(tmp_path / "tls" / missing) in msg


def test_insecure_hub_needs_no_tls_files(tmp_path):
    cfg = load_hub_config(_hub(tmp_path, _hub_rendered(insecure=True), tls=False))
    assert cfg.insecure_plaintext is True


def test_hub_unknown_table(tmp_path):
    _expect_hub(_hub(tmp_path, _hub_rendered() + "\n[pbft]\nf = 1\n"), "unknown table [pbft]")


def test_hub_consensus_replica_must_exist_and_keys_are_checked(tmp_path):
    _expect_hub(_hub(tmp_path, _hub_rendered() + '\n[consensus]\nreplica = "nowhere.toml"\n'),
                "[consensus] replica")
    _expect_hub(_hub(tmp_path, _hub_rendered() + "\n[consensus]\nf = 1\n"), "[consensus]")


@pytest.mark.parametrize(
    "after,key,table",
    [('listen = "0.0.0.0:7700"', "port", "server"), ("max_batches_per_block = 10000", "max_batch", "chain"),
     ('chain_id = "substation-7"', "chain", "hub")],
)
def test_hub_unknown_key(tmp_path, after, key, table):
    text = _hub_rendered()
    assert after in text
    _expect_hub(_hub(tmp_path, text.replace(after, f"{after}\n{key} = 1", 1)), f"[{table}] {key}",
                "unknown setting")


@pytest.mark.parametrize(
    "old,new,where",
    [
        ("block_interval_s = 2.0", 'block_interval_s = "2"', "[chain] block_interval_s"),
        ("max_batches_per_block = 10000", "max_batches_per_block = 1e4", "[chain] max_batches_per_block"),
        ('database = "hub.sqlite"', "database = 1", "[hub] database"),
        ('listen = "0.0.0.0:7700"', "listen = 7700", "[server] listen"),
        ("max_group_commit = 256", "max_group_commit = false", "[server] max_group_commit"),
    ],
)
def test_hub_wrong_type(tmp_path, old, new, where):
    text = _hub_rendered()
    assert old in text
    _expect_hub(_hub(tmp_path, text.replace(old, new, 1)), where, "must be")


def test_hub_wrong_type_insecure(tmp_path):
    text = re.sub(r"^insecure_plaintext = .*$", 'insecure_plaintext = "yes"', _hub_rendered(), flags=re.M)
    _expect_hub(_hub(tmp_path, text), "[server] insecure_plaintext", "must be bool")


@pytest.mark.parametrize(
    "old,new,where",
    [
        ("block_interval_s = 2.0", "block_interval_s = -1.0", "[chain] block_interval_s"),
        ("block_interval_s = 2.0", "block_interval_s = 0", "[chain] block_interval_s"),
        ("max_batches_per_block = 10000", "max_batches_per_block = 0", "[chain] max_batches_per_block"),
        ("max_group_commit = 256", "max_group_commit = -5", "[server] max_group_commit"),
    ],
)
def test_hub_not_positive(tmp_path, old, new, where):
    _expect_hub(_hub(tmp_path, _hub_rendered().replace(old, new, 1)), where, "must be > 0")


@pytest.mark.parametrize("bad", ["sub station", "-7", "s;7", ""])
def test_hub_bad_chain_id(tmp_path, bad):
    text = _hub_rendered().replace('chain_id = "substation-7"', f'chain_id = "{bad}"')
    _expect_hub(_hub(tmp_path, text), "[hub] chain_id", "not a valid identifier")


def test_hub_missing_chain_id(tmp_path):
    text = re.sub(r"^chain_id = .*$", "", _hub_rendered(), flags=re.M)
    _expect_hub(_hub(tmp_path, text), "[hub] chain_id", "missing")


def test_hub_invalid_toml(tmp_path):
    _expect_hub(_hub(tmp_path, _hub_rendered() + "\n[chain]\n"), "not valid TOML")
    _expect_hub(_hub(tmp_path, "[hub\n"), "not valid TOML")


# ---------------------------------------------------------------------------
# The hub's settings: docs, example, new tables.
# ---------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def _documented_hub_settings() -> dict[str, set[str]]:
    """(table -> keys) from the settings table of docs/hub.md."""
    text = (ROOT / "docs" / "hub.md").read_text(encoding="utf-8")
    section = text.split("## hub.toml", 1)[1].split("\n## ", 1)[0]
    out: dict[str, set[str]] = {}
    table = None
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[1].startswith("`"):
            continue
        if cells[0]:
            table = re.fullmatch(r"`\[(\w+)\]`", cells[0]).group(1)
        out.setdefault(table, set()).update(re.findall(r"`(\w+)`", cells[1]))
    return out


def test_docs_table_lists_exactly_the_settings_the_loader_accepts():
    from hub.config import SETTINGS

    assert _documented_hub_settings() == {t: set(keys) for t, keys in SETTINGS.items()}


def test_docs_defaults_are_the_loaders_defaults(tmp_path):
    # A config with only the required key: every other value is the default docs/hub.md states.
    path = tmp_path / "hub.toml"
    path.write_text('[hub]\nchain_id = "substation-7"\n[server]\ninsecure_plaintext = true\n')
    cfg = load_hub_config(path)
    assert (cfg.listen, cfg.max_group_commit, cfg.health_interval_s) == ("127.0.0.1:7700", 256, 5.0)
    assert (cfg.block_interval_s, cfg.max_batches_per_block) == (2.0, 10_000)
    assert cfg.metrics_listen == "127.0.0.1:9464"
    assert (cfg.log_format, cfg.log_level, cfg.replicas) == ("auto", "INFO", ())
    assert cfg.tls_ca == tmp_path / "tls" / "ca.pem"
    assert cfg.database_url == f"sqlite:///{(tmp_path / 'hub.sqlite').resolve()}"
    docs = (ROOT / "docs" / "hub.md").read_text()
    for shown in ("`127.0.0.1:7700`", "`256`", "`5.0`", "`2.0`", "`10000`", "`127.0.0.1:9464`", "`auto`",
                  "`INFO`", "`[]`", "`tls/ca.pem`", "`hub.sqlite`"):
        assert shown in docs


def test_example_hub_config_loads_and_sets_every_table(tmp_path):
    from hub.config import SETTINGS

    example = ROOT / "deploy" / "hub.example.toml"
    copy = _hub(tmp_path, example.read_text(encoding="utf-8"))
    (copy.parent / "replica-0.toml").write_text("")  # written by `gridtrace chain init`
    cfg = load_hub_config(copy)
    assert cfg.consensus_replica == copy.parent / "replica-0.toml"
    assert cfg.chain_id == "substation-7"
    assert cfg.database_url.startswith("postgresql+psycopg://")
    assert cfg.listen == "0.0.0.0:7700" and cfg.metrics_listen == "0.0.0.0:9464"
    assert cfg.log_format == "json" and cfg.replicas == ("hub7-b.example.net:7700", "hub7-c.example.net:7700")
    import tomllib

    doc = tomllib.loads(example.read_text())
    assert {t: set(v) for t, v in doc.items()} == {t: set(k) for t, k in SETTINGS.items()}


@pytest.mark.parametrize(
    "table,line,fragment",
    [
        ("metrics", 'listen = "9464"', "must be host:port"),
        ("logging", 'format = "xml"', "must be one of auto, json, text"),
        ("logging", 'level = "LOUD"', "must be one of DEBUG"),
        ("peers", "replicas = [7700]", "host:port strings"),
        ("peers", 'replicas = ["hub-b"]', "must be host:port"),
        ("chain", "block_interval_s = 0", "must be > 0"),
    ],
)
def test_bad_new_hub_settings_name_file_line_and_key(tmp_path, table, line, fragment):
    text = _hub_rendered(insecure=True)
    text = re.sub(rf"^\[{table}\]\n(?:(?!\[).*\n)*", "", text, flags=re.MULTILINE)  # drop the rendered table
    text += f"\n[{table}]\n{line}\n"
    path = _hub(tmp_path, text, tls=False)
    key = line.split(" ")[0]
    lineno = text.splitlines().index(line) + 1
    _expect_hub(path, f"{path}:{lineno}: [{table}] {key}:", fragment)


def test_redacted_database_url_hides_the_password():
    from hub.config import redact_url

    assert redact_url("postgresql+psycopg://hub:s3cret@db:5432/g") == "postgresql+psycopg://hub:***@db:5432/g"
    assert "s3cret" not in redact_url("postgresql://u:s3cret@h/d")
    assert redact_url("sqlite:////var/lib/hub.sqlite") == "sqlite:////var/lib/hub.sqlite"
