"""The baseline: ThingsBoard IoT Gateway reading the same simulated meters through its
Modbus connector into a local mosquitto broker that stands in for the ThingsBoard server.

ThingsBoard is never vendored or committed: `ensure_venv` installs PyPI
`thingsboard-gateway` (pinned below) into bench/.venv-thingsboard once, together with
the pymodbus version its Modbus connector would otherwise pip-install at its first
start. The gateway runs with its shipped tb_gateway.json and logs.json; only the
server address, the access token and the connector list are changed. Its update
check (an HTTPS POST to updates.thingsboard.io at start) is pointed at a dead local
proxy so a benchmark never phones home.

A paho subscriber on the broker counts what the gateway delivered (telemetry
messages, device readings and values), so the baseline is known to be doing the
work, and answers the gateway's getSessionLimits RPC the way a server does
(no limits), instead of letting it wait for a timeout.

Run on its own (the simulator must be running; agent_footprint.py does all of this):

    python bench/thingsboard_gateway.py --sim-port 5020 --meters 32 --seconds 60 [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procstats import Footprint, measure

BENCH = Path(__file__).resolve().parent
VENV = BENCH / ".venv-thingsboard"
TB_VERSION = "3.8.5"
# What the 3.8.5 Modbus connector requires (it pip-installs these at first start otherwise,
# which would land inside a measured window and need the network).
TB_EXTRAS = ("pymodbus==3.9.2", "pyserial", "pyserial-asyncio")
MOSQUITTO = "/usr/sbin/mosquitto"
GATEWAY_TOKEN = "bench-gateway-token"  # its MQTT user name

# The 13 values per meter of the measurement, named as in our SDM630 map.
THIRTEEN = (
    "voltage_l1", "voltage_l2", "voltage_l3",
    "current_l1", "current_l2", "current_l3",
    "power_l1", "power_l2", "power_l3",
    "power_total", "frequency", "energy_import", "energy_export",
)


class BaselineError(Exception):
    """The baseline could not be set up or did not deliver data; the message says what to check."""


def venv_python() -> Path:
    return VENV / "bin" / "python"


def installed_version() -> str | None:
    if not venv_python().exists():
        return None
    done = subprocess.run(
        [str(venv_python()), "-c", "from importlib.metadata import version; print(version('thingsboard-gateway'))"],
        capture_output=True, text=True, check=False,
    )
    return done.stdout.strip() if done.returncode == 0 else None


def ensure_venv(version: str = TB_VERSION, quiet: bool = False) -> str:
    """Create bench/.venv-thingsboard with thingsboard-gateway==version once; return the version."""
    have = installed_version()
    if have == version:
        return have
    if not quiet:
        print(f"installing thingsboard-gateway {version} into {VENV} (once) ...", file=sys.stderr, flush=True)
    if not venv_python().exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    pip = [str(venv_python()), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    try:
        subprocess.run([*pip, f"thingsboard-gateway=={version}", *TB_EXTRAS], check=True)
    except subprocess.CalledProcessError as exc:
        raise BaselineError(
            f"pip could not install thingsboard-gateway {version} into {VENV} (exit {exc.returncode}); "
            "check that PyPI is reachable, or delete the folder and retry"
        ) from exc
    return installed_version() or version


def tb_package_dir() -> Path:
    done = subprocess.run(
        [str(venv_python()), "-c", "import thingsboard_gateway, os; print(os.path.dirname(thingsboard_gateway.__file__))"],
        capture_output=True, text=True, check=True,
    )
    return Path(done.stdout.strip())


def modbus_connector_config(sim_host: str, sim_port: int, meters: int, registers: Sequence) -> dict:
    """One slave per meter on the shared connection, one timeseries entry per value: how the
    connector is configured for an SDM630 (32-bit floats, input registers, big-endian words)."""
    timeseries = [
        {"tag": r.name, "type": "32float", "functionCode": 4, "objectsCount": 2, "address": r.address}
        for r in registers
    ]
    slaves = [
        {
            "host": sim_host, "port": sim_port, "type": "tcp", "method": "socket",
            "timeout": 1, "byteOrder": "BIG", "wordOrder": "BIG",
            "retries": True, "retryOnEmpty": True, "retryOnInvalid": True,
            "pollPeriod": 1000, "unitId": unit, "deviceName": f"MTR-{unit:04d}", "deviceType": "SDM630",
            "connectAttemptTimeMs": 5000, "connectAttemptCount": 5, "waitAfterFailedAttemptsMs": 300000,
            "attributes": [], "timeseries": timeseries, "attributeUpdates": [], "rpc": [],
        }
        for unit in range(1, meters + 1)
    ]
    return {"logLevel": "INFO", "master": {"slaves": slaves}}


def write_config(config_dir: Path, mqtt_port: int, storage: str, connector: dict) -> None:
    """The shipped tb_gateway.json and logs.json with our server, token, storage and connector."""
    shipped = tb_package_dir() / "config"
    config_dir.mkdir(parents=True, exist_ok=True)
    main = json.loads((shipped / "tb_gateway.json").read_text())
    main["thingsboard"].update(host="127.0.0.1", port=mqtt_port)
    main["thingsboard"]["security"] = {"type": "accessToken", "accessToken": GATEWAY_TOKEN}
    if storage != "memory":
        # The shipped file carries the keys of every storage type; point them into our folder.
        main["storage"].update(type=storage, data_folder_path=str(config_dir.parent / "data") + "/",
                               data_file_path=str(config_dir.parent / "data") + "/")
        (config_dir.parent / "data").mkdir(exist_ok=True)
    main["connectors"] = [{"type": "modbus", "name": "Modbus Connector", "configuration": "modbus.json"}]
    (config_dir / "tb_gateway.json").write_text(json.dumps(main, indent=2))
    (config_dir / "modbus.json").write_text(json.dumps(connector, indent=2))
    shutil.copy(shipped / "logs.json", config_dir / "logs.json")


class Broker:
    """A throwaway mosquitto on loopback."""

    def __init__(self, directory: Path, port: int) -> None:
        if not Path(MOSQUITTO).exists():
            raise BaselineError(f"{MOSQUITTO} not found; install the Debian package mosquitto")
        self.port = port
        # The gateway subscribes to topics it also publishes on (client attributes, RPC), which a
        # ThingsBoard server keeps apart but a plain broker echoes back: its remote configurator
        # then re-applies its own published config in a loop. So the gateway's user may only read
        # the reply topics a server writes; our stand-in (anonymous) reads and writes everything.
        acl = directory / "mosquitto.acl"
        acl.write_text("topic readwrite #\n\n"
                       f"user {GATEWAY_TOKEN}\ntopic write #\n"
                       "topic read v1/devices/me/rpc/response/+\n"
                       "topic read v1/devices/me/attributes/response/+\n"
                       "topic read v1/gateway/attributes/response\n")
        conf = directory / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        f"max_queued_messages 100000\nacl_file {acl}\n"
                        # Started as root, mosquitto drops to user "mosquitto", who cannot read a
                        # private temporary folder; stay the user we are.
                        f"user {pwd.getpwuid(os.getuid()).pw_name}\n")
        self.log = open(directory / "mosquitto.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


class ServerStandIn:
    """Counts what the gateway publishes; answers its session-limits RPC like a server."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self._lock = threading.Lock()
        self.messages = 0     # telemetry publishes (one may carry several devices and readings)
        self.readings = 0     # (device, ts) entries
        self.values = 0       # key/value pairs
        self.devices: set[str] = set()
        self.connects = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-server-stand-in")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason, props):
        client.subscribe([("v1/gateway/telemetry", 1), ("v1/gateway/connect", 1),
                          ("v1/devices/me/rpc/request/+", 1)])

    def _on_message(self, client, userdata, msg):
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            return
        if msg.topic == "v1/gateway/telemetry":
            readings = values = 0
            for entries in payload.values():
                entries = entries if isinstance(entries, list) else [entries]
                for e in entries:
                    readings += 1
                    values += len(e.get("values", e)) if isinstance(e, dict) else 0
            with self._lock:
                self.messages += 1
                self.readings += readings
                self.values += values
                self.devices.update(payload)
        elif msg.topic == "v1/gateway/connect":
            with self._lock:
                self.connects += 1
        elif msg.topic.startswith("v1/devices/me/rpc/request/") and payload.get("method") == "getSessionLimits":
            # A gateway also receives its own request here (it subscribes to server-side RPC on
            # the same topic filter); answering once per request id is what a server does.
            reply = {"maxPayloadSize": 65536, "maxInflightMessages": 100, "rateLimits": {}, "gatewayRateLimits": {}}
            client.publish("v1/devices/me/rpc/response/" + msg.topic.rsplit("/", 1)[1], json.dumps(reply), qos=1)

    def snapshot(self) -> tuple[int, int, int]:
        with self._lock:
            return self.messages, self.readings, self.values

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass(frozen=True)
class BaselineResult:
    version: str
    storage: str
    meters: int
    values_per_meter: int
    footprint: Footprint
    messages_per_s: float
    readings_per_s: float
    values_per_s: float
    devices_seen: int


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_baseline(sim_host: str, sim_port: int, meters: int, registers: Sequence, seconds: float,
                 warmup: float, storage: str = "memory", workdir: Path | None = None) -> BaselineResult:
    """Start broker + gateway, wait for data, warm up, measure one window, stop both.

    The working folder (configs, logs) is removed after a good run and kept after a failure."""
    version = ensure_venv()
    d = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tb-bench-"))
    (d / "logs").mkdir(parents=True, exist_ok=True)
    port = free_port()
    write_config(d / "config", port, storage, modbus_connector_config(sim_host, sim_port, meters, registers))
    broker = Broker(d, port)
    tb = server = None
    try:
        _wait_for_port(port, broker.proc, "mosquitto")
        server = ServerStandIn(port)
        env = dict(os.environ, TB_GW_CONFIG_DIR=str(d / "config"),
                   HTTPS_PROXY="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9")
        log = open(d / "gateway.log", "wb")  # noqa: SIM115 - the child holds it
        tb = subprocess.Popen([str(VENV / "bin" / "thingsboard-gateway")], cwd=d, env=env, stdout=log,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 60
        while server.snapshot()[1] == 0:
            if tb.poll() is not None:
                raise BaselineError(f"thingsboard-gateway exited with code {tb.returncode}; see {d}/gateway.log")
            if time.monotonic() > deadline:
                raise BaselineError(f"thingsboard-gateway delivered nothing to the broker in 60 s; "
                                    f"see {d}/gateway.log and {d}/logs")
            time.sleep(0.2)
        time.sleep(warmup)
        m0, r0, v0 = server.snapshot()
        t0 = time.monotonic()
        fp = measure(tb.pid, seconds)
        m1, r1, v1 = server.snapshot()
        dt = time.monotonic() - t0
        devices = len(server.devices)
    finally:
        if server is not None:
            server.stop()
        if tb is not None and tb.poll() is None:
            tb.terminate()  # nothing of the gateway's state matters after the window
            try:
                tb.wait(20)
            except subprocess.TimeoutExpired:
                tb.kill()
                tb.wait()
        broker.stop()
    if workdir is None:
        shutil.rmtree(d, ignore_errors=True)
    return BaselineResult(version, storage, meters, len(registers), fp,
                          (m1 - m0) / dt, (r1 - r0) / dt, (v1 - v0) / dt, devices)


def _wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 10.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BaselineError(f"{what} exited with code {proc.returncode} during start-up")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise BaselineError(f"{what} did not open port {port} within {timeout:.0f} s")


def thirteen_registers():
    from edge.registermap import load_register_map

    sdm = load_register_map("eastron_sdm630")
    return [sdm.register(n) for n in THIRTEEN]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sim-host", default="127.0.0.1")
    ap.add_argument("--sim-port", type=int, required=True)
    ap.add_argument("--meters", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--warmup", type=float, default=10.0)
    ap.add_argument("--storage", choices=("memory", "sqlite", "file"), default="memory",
                    help="the gateway's event storage (shipped default: memory)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    r = run_baseline(args.sim_host, args.sim_port, args.meters, thirteen_registers(), args.seconds,
                     args.warmup, args.storage)
    print(f"thingsboard-gateway {r.version} ({r.storage} storage), {r.meters} meters x {r.values_per_meter} values: "
          f"CPU {r.footprint.cpu_pct:.1f} % of one core, peak RSS {r.footprint.peak_rss_mb:.1f} MB, "
          f"{r.footprint.threads} threads; delivered {r.readings_per_s:.1f} readings/s "
          f"({r.values_per_s:.0f} values/s) in {r.messages_per_s:.1f} messages/s")
    if args.json:
        print(json.dumps({**asdict(r), "footprint": asdict(r.footprint)}))


if __name__ == "__main__":
    main()
