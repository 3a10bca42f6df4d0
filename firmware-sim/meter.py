"""Pure dynamics of a simulated electricity meter (no I/O; driven by the caller's clock).

A `SimulatedMeter` answers "what would a meter on this supply show at wall-clock time t?",
for a three-phase meter (an SDM630's quantities) or a single-phase one (an SDM120's).
Active and reactive power are piecewise constant over one-second slots, and each slot's
value is a pure function of (seed, unit, slot): a daily load curve by local hour, per-meter
variation, seeded noise, occasional appliances and, for some meters, rooftop PV with a daily
curve and an EV charger with charging sessions mostly in the evening. Because of that the
energy counters can be the exact integral of power, however `advance` is called, and two
meters built alike and advanced through the same times read the same.

Two meter faults live here because they change what the meter itself measures: a clock
that runs fast or slow (`set_clock_drift`: the counters integrate over the meter's own time
axis, and `clock` gives the meter's idea of the time for its timestamps) and a counter reset
(`reset_counters`). Faults on the wire (silence, exceptions, stuck registers, word order)
belong to the servers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

__all__ = ["PROFILES", "SLOT_S", "EvSession", "SimulatedMeter", "quantity_names"]

#: Power is held constant over slots of this many seconds (a real meter refreshes about once a second).
SLOT_S = 1.0

# Load relative to the meter's base load, at each local hour 00..23 (linear in between).
PROFILES: dict[str, tuple[float, ...]] = {
    # evening peak, smaller morning peak, low at night
    "household": (
        0.55, 0.50, 0.45, 0.45, 0.45, 0.50, 0.80, 1.20, 1.25, 0.95, 0.85, 0.85,
        0.95, 0.90, 0.85, 0.90, 1.05, 1.35, 1.75, 1.85, 1.70, 1.40, 1.05, 0.75,
    ),
    # business hours on weekdays (weekends use the night level all day)
    "commercial": (
        0.35, 0.35, 0.35, 0.35, 0.35, 0.40, 0.60, 1.10, 1.55, 1.65, 1.70, 1.70,
        1.60, 1.65, 1.70, 1.65, 1.55, 1.35, 0.90, 0.60, 0.45, 0.40, 0.35, 0.35,
    ),
}
_WEEKEND_LEVEL = 0.35

# Streams keep the random draws for different purposes independent of each other.
_S_PARAM, _S_NOISE, _S_SLOW, _S_SHORT, _S_LONG, _S_CLOUD, _S_DAY, _S_GRID, _S_EV = range(9)

_SHORT_WINDOW_S = 900.0  # kettles, microwaves, hobs: at most one per quarter hour
_LONG_WINDOW_S = 7200.0  # washing machines, ovens, compressors: at most one per two hours
_SLOW_WINDOW_S = 300.0  # drift of the base load
_CLOUD_WINDOW_S = 600.0

# EV charging: a car plugs in on about 60 % of days, four times in five in the evening after
# work, otherwise during the day; it takes what its battery needs and leaves.
_EV_DAY_PROBABILITY = 0.6
_EV_EVENING_SHARE = 0.8
_EV_EVENING_HOURS = (17.0, 22.0)
_EV_DAY_HOURS = (8.0, 16.0)
_EV_NEED_KWH = (6.0, 30.0)
_EV_HOURS = (0.5, 6.0)

_PHASE_NAMES = tuple(
    tuple(f"{q}_l{n}" for q in ("voltage", "current", "power", "apparent_power",
                                "reactive_power", "power_factor", "phase_angle"))
    for n in (1, 2, 3)
)
_PHASE_SHIFT = (0.0, -2.0 * math.pi / 3.0, 2.0 * math.pi / 3.0)
_M64 = (1 << 64) - 1
_T = TypeVar("_T")


def _mix(x: int) -> int:
    """SplitMix64 finaliser: a fast, well-spread 64-bit hash."""
    x = (x + 0x9E3779B97F4A7C15) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _hash(*keys: int) -> int:
    h = 0
    for key in keys:
        h = _mix(h ^ (key & _M64))
    return h


def _unit_noise(bits: int, index: int) -> float:
    """Zero-mean, unit-variance noise from 21 bits of `bits` (uniform, cheap, good enough)."""
    u = ((bits >> (21 * index)) & 0x1FFFFF) * (1.0 / (1 << 21))
    return (u - 0.5) * 3.4641016151377544


class _Draws:
    """Uniform numbers keyed by integers, so any slot can be computed on its own.

    A sequential RNG would make slot k depend on every slot drawn before it, which would make
    values depend on how often the caller happened to sample.
    """

    __slots__ = ("_state",)

    def __init__(self, *keys: int) -> None:
        self._state = _hash(*keys)

    def uniform(self) -> float:
        self._state = _mix(self._state)
        return (self._state >> 11) * (1.0 / (1 << 53))


@dataclass(frozen=True)
class EvSession:
    """One EV charging session: from `start` to `end` (epoch seconds), at `power_w`."""

    start: float
    end: float
    power_w: float

    @property
    def energy_kwh(self) -> float:
        """Energy the session would deliver if power were continuous over it."""
        return self.power_w * (self.end - self.start) / 3.6e6


@dataclass(frozen=True)
class _Appliance:
    start: float
    end: float
    phase: int
    power_w: float
    reactive_var: float


class _Slot(NamedTuple):
    """Everything integrated over a slot: per-phase and total active and reactive power."""

    power: tuple[float, float, float]
    reactive: tuple[float, float, float]
    power_total: float
    reactive_total: float


def quantity_names(phases: int = 3) -> tuple[str, ...]:
    """Names of every quantity `SimulatedMeter.advance` returns: the SDM630 map's names for
    a three-phase meter, the SDM120 map's for a single-phase one."""
    if phases == 1:
        return _QUANTITIES_1P
    if phases == 3:
        return _QUANTITIES
    raise ValueError(f"a meter has 1 or 3 phases, not {phases}")


class SimulatedMeter:
    """One simulated meter (three-phase or single-phase) with its own load, supply,
    optional PV and EV charger, energy counters and internal clock."""

    def __init__(
        self,
        unit: int,
        seed: int,
        base_load_w: float,
        *,
        profile: str = "household",
        pv_peak_w: float = 0.0,
        appliance_w: float | None = None,
        utc_offset_h: float = 0.0,
        nominal_voltage: float = 230.0,
        nominal_frequency: float = 50.0,
        initial_import_kwh: float | None = None,
        initial_export_kwh: float | None = None,
        phases: int = 3,
        ev_charger_w: float = 0.0,
    ) -> None:
        if phases not in (1, 3):
            raise ValueError(f"a meter has 1 or 3 phases, not {phases}")
        if ev_charger_w < 0:
            raise ValueError(f"ev_charger_w must be 0 or more, got {ev_charger_w}")
        if profile not in PROFILES:
            raise ValueError(f"unknown load profile {profile!r}; known: {', '.join(PROFILES)}")
        if base_load_w <= 0:
            raise ValueError(f"base_load_w must be positive, got {base_load_w}")
        if pv_peak_w < 0:
            raise ValueError(f"pv_peak_w must be 0 or more, got {pv_peak_w}")
        self.unit = unit
        self.seed = seed
        self.base_load_w = float(base_load_w)
        self.profile = profile
        self.pv_peak_w = float(pv_peak_w)
        self.utc_offset_h = utc_offset_h
        self.nominal_voltage = nominal_voltage
        self.nominal_frequency = nominal_frequency
        self.phases = phases
        self.ev_charger_w = float(ev_charger_w)

        d = _Draws(seed, unit, _S_PARAM)
        # Imbalance: households rarely load their three phases evenly.
        weights = [0.7 + 0.6 * d.uniform() for _ in range(3)]
        self._phase_share = (
            tuple(w / sum(weights) for w in weights) if phases == 3 else (1.0, 0.0, 0.0)
        )
        self._pf = tuple(0.90 + 0.08 * d.uniform() for _ in range(3))
        self._voltage_offset = 4.0 * (2.0 * d.uniform() - 1.0)
        self._phase_voltage_offset = tuple(1.5 * (2.0 * d.uniform() - 1.0) for _ in range(3))
        self._supply_ohm = 0.03 + 0.07 * d.uniform()
        self._appliance_rate = 0.6 + 0.8 * d.uniform()
        self.appliance_w = (
            float(appliance_w)
            if appliance_w is not None
            else (1200.0 + 1400.0 * d.uniform() if profile == "household" else 0.3 * base_load_w)
        )
        years = 0.5 + 2.5 * d.uniform()
        mean_level = sum(PROFILES[profile]) / 24.0
        annual_kwh = self.base_load_w * mean_level * 8.76
        self._energy = {
            "import": initial_import_kwh if initial_import_kwh is not None else annual_kwh * years,
            "export": (
                initial_export_kwh
                if initial_export_kwh is not None
                else self.pv_peak_w * 0.55 * years
            ),
            "reactive_import": annual_kwh * years * 0.2,
            "reactive_export": 0.0,
        }
        self._t: float | None = None
        self._slot_cache: tuple[int, _Slot] | None = None
        self._window_cache: dict[tuple[int, int], object] = {}
        self._noise_key = _hash(seed, unit, _S_NOISE)
        self._voltage_noise_key = _hash(seed, unit, _S_NOISE, 1)
        # One grid: frequency depends on the seed only, so all meters of a fleet agree.
        self._grid_key = _hash(seed, 0, _S_GRID)
        self._grid_phase = 2.0 * math.pi * _Draws(seed, 0, _S_GRID, 1).uniform()
        self._q_per_w = tuple(math.tan(math.acos(pf)) for pf in self._pf)
        # The meter's own clock: clock(t) = t + offset + (t - epoch) * ppm / 1e6.
        self._drift_ppm = 0.0
        self._clock_offset = 0.0
        self._clock_epoch = 0.0

    @classmethod
    def for_unit(
        cls,
        unit: int,
        seed: int,
        *,
        utc_offset_h: float = 0.0,
        phases: int = 3,
        ev_every: int = 7,
    ) -> SimulatedMeter:
        """A meter with plausible, seed-derived size and kind for unit `unit` of a fleet.

        Three-phase: every fifth unit is a small business, the rest households. Every third
        unit (2, 5, 8, ...) has rooftop PV and so exports at times, the others never export.
        Every `ev_every`-th unit (4, 4 + ev_every, ...; 0 for none) has an EV charger of
        7-11 kW (3.7-7.4 kW on a single-phase supply). Single-phase meters are all households.
        """
        d = _Draws(seed, unit, _S_PARAM, 1)
        commercial = unit % 5 == 0 and phases == 3
        has_pv = unit % 3 == 2
        if commercial:
            base = 3000.0 + 9000.0 * d.uniform()
            pv = (10000.0 + 30000.0 * d.uniform()) if has_pv else 0.0
        else:
            base = 250.0 + 450.0 * d.uniform()
            pv = (3000.0 + 6000.0 * d.uniform()) if has_pv else 0.0
            if phases == 1:
                # a single-phase inverter: grid codes cap them around 4.6 kW
                pv *= 0.5
        ev = 0.0
        if ev_every > 0 and unit % ev_every == 4 % ev_every:
            # a draw of its own, so adding EVs leaves every other parameter as it was
            u = _Draws(seed, unit, _S_EV, -1).uniform()
            ev = 7000.0 + 4000.0 * u if phases == 3 else 3700.0 + 3700.0 * u
        return cls(
            unit,
            seed,
            base,
            profile="commercial" if commercial else "household",
            pv_peak_w=pv,
            utc_offset_h=utc_offset_h,
            phases=phases,
            ev_charger_w=ev,
        )

    @property
    def time(self) -> float | None:
        """The time of the last `advance`, or None before the first."""
        return self._t

    def advance(self, t: float) -> dict[str, float]:
        """Move the meter to wall-clock time `t` (seconds since the epoch) and read it.

        The first call sets the counters' starting point. Time may not go backwards.
        """
        if self._t is None:
            self._t = t
        elif t < self._t:
            raise ValueError(
                f"simulated meter unit {self.unit}: time went backwards "
                f"({t} after {self._t}); drive it from a monotonic clock"
            )
        else:
            self._integrate(self._t, t)
            self._t = t
        return self._read(t)

    def power_at(self, t: float) -> float:
        """Total active power in W at time `t` (the integrand of the energy counters)."""
        return self._slot(math.floor(t / SLOT_S)).power_total

    # -- the meter's own clock and its faults ----------------------------------------------

    def clock(self, t: float) -> float:
        """The meter's own clock reading (epoch seconds) at true time `t`.

        Equal to `t` unless a clock drift was set; a meter that timestamps its readings
        (an MQTT meter) stamps them with this.
        """
        return t + self._clock_offset + (t - self._clock_epoch) * self._drift_ppm * 1e-6

    @property
    def clock_drift_ppm(self) -> float:
        """How fast the meter's clock runs, in parts per million (0: exact)."""
        return self._drift_ppm

    def set_clock_drift(self, ppm: float, t: float) -> None:
        """From true time `t` on, let the meter's clock run `ppm` parts per million fast
        (negative: slow).

        The meter integrates power over its own time axis, so its energy counters grow
        by (1 + ppm/1e6) times the true energy from then on, and `clock` drifts away from
        true time; the offset gathered so far is kept (setting 0 stops the drift, it does
        not resynchronise the clock).
        """
        if not -1e6 < ppm < 1e6:
            raise ValueError(f"clock drift must be within +-1e6 ppm, got {ppm}")
        if self._t is not None:
            self.advance(t)  # integrate up to t at the old rate
        self._clock_offset = self.clock(t) - t
        self._clock_epoch = t
        self._drift_ppm = float(ppm)

    def reset_counters(self, t: float) -> None:
        """At true time `t`, set every energy counter to 0 (as after a firmware reset or a
        meter replaced with a new one on the same address); they keep integrating."""
        if self._t is not None:
            self.advance(t)
        else:
            self._t = t
        for key in self._energy:
            self._energy[key] = 0.0

    # -- EV charging --------------------------------------------------------------------------

    def ev_sessions(self, start: float, end: float) -> list[EvSession]:
        """The EV charging sessions overlapping [start, end), in time order."""
        if self.ev_charger_w <= 0.0:
            return []
        first = self._local_day(start) - 1  # a session may run on past midnight
        found = []
        for day in range(first, self._local_day(end) + 1):
            for session in self._windowed(_S_EV, day, self._ev_day):
                if session.start < end and session.end > start:
                    found.append(session)
        return found

    # -- integration ----------------------------------------------------------------------

    def _integrate(self, a: float, b: float) -> None:
        if b <= a:
            return
        k_a = math.floor(a / SLOT_S)
        k_b = math.floor(b / SLOT_S)
        # W*s sums, turned into kWh once at the end
        imp = exp = r_imp = r_exp = 0.0
        for k in range(k_a, k_b + 1):
            lo = a if k == k_a else k * SLOT_S
            hi = b if k == k_b else (k + 1) * SLOT_S
            if hi <= lo:
                continue
            slot = self._slot(k)
            seconds = hi - lo
            p = slot.power_total
            q = slot.reactive_total
            if p >= 0:
                imp += p * seconds
            else:
                exp -= p * seconds
            if q >= 0:
                r_imp += q * seconds
            else:
                r_exp -= q * seconds
        # A fast clock makes the meter think more time passed than did: it over-counts.
        to_kwh = (1.0 + self._drift_ppm * 1e-6) / 3.6e6
        e = self._energy
        e["import"] += imp * to_kwh
        e["export"] += exp * to_kwh
        e["reactive_import"] += r_imp * to_kwh
        e["reactive_export"] += r_exp * to_kwh

    # -- the integrand ----------------------------------------------------------------------

    def _slot(self, k: int) -> _Slot:
        if self._slot_cache is not None and self._slot_cache[0] == k:
            return self._slot_cache[1]
        t = k * SLOT_S
        hour = self._local_hour(t)
        level = self._profile_level(t, hour)
        drift = self._windowed(_S_SLOW, math.floor(t / _SLOW_WINDOW_S), self._drift)
        bits = _mix(self._noise_key ^ (k & _M64))
        base_total = self.base_load_w * level * drift

        share, q_per_w = self._phase_share, self._q_per_w
        # standby loads never quite vanish: at least 5 W per phase
        p1 = max(base_total * share[0] * (1.0 + 0.03 * _unit_noise(bits, 0)), 5.0)
        if self.phases == 3:
            p2 = max(base_total * share[1] * (1.0 + 0.03 * _unit_noise(bits, 1)), 5.0)
            p3 = max(base_total * share[2] * (1.0 + 0.03 * _unit_noise(bits, 2)), 5.0)
        else:
            p2 = p3 = 0.0
        power = [p1, p2, p3]
        reactive = [p1 * q_per_w[0], p2 * q_per_w[1], p3 * q_per_w[2]]
        for appliance in self._appliances_at(t, hour):
            power[appliance.phase] += appliance.power_w
            reactive[appliance.phase] += appliance.reactive_var
        # the inverter and the charger run at unity power factor, balanced over the phases
        # of a three-phase supply
        spread = 1.0 / self.phases
        ev = self._ev_power_at(t)
        if ev > 0.0:
            for i in range(self.phases):
                power[i] += ev * spread
        pv = self._pv_at(t, hour)
        if pv > 0.0:
            for i in range(self.phases):
                power[i] -= pv * spread
        slot = _Slot(
            (power[0], power[1], power[2]),
            (reactive[0], reactive[1], reactive[2]),
            power[0] + power[1] + power[2],
            reactive[0] + reactive[1] + reactive[2],
        )
        self._slot_cache = (k, slot)
        return slot

    def _local_hour(self, t: float) -> float:
        return ((t / 3600.0) + self.utc_offset_h) % 24.0

    def _local_day(self, t: float) -> int:
        return math.floor((t / 3600.0 + self.utc_offset_h) / 24.0)

    def _profile_level(self, t: float, hour: float) -> float:
        if self.profile == "commercial" and self._is_weekend(t):
            return _WEEKEND_LEVEL
        return _interpolate(PROFILES[self.profile], hour)

    def _is_weekend(self, t: float) -> bool:
        return (self._local_day(t) + 3) % 7 >= 5  # 1970-01-01 was a Thursday; Monday is 0

    def _appliances_at(self, t: float, hour: float) -> list[_Appliance]:
        found = []
        for stream, window_s in ((_S_SHORT, _SHORT_WINDOW_S), (_S_LONG, _LONG_WINDOW_S)):
            window = math.floor(t / window_s)
            appliance = self._windowed(stream, window, self._appliance, stream, window_s)
            if appliance is not None and appliance.start <= t < appliance.end:
                found.append(appliance)
        return found

    def _windowed(
        self, stream: int, window: int, compute: Callable[..., _T], *args: object
    ) -> _T:
        """compute(window, *args), memoised: slots far outnumber the windows they fall in."""
        key = (stream, window)
        try:
            return self._window_cache[key]  # type: ignore[return-value]
        except KeyError:
            pass
        if len(self._window_cache) > 256:
            self._window_cache.clear()
        value = compute(window, *args)
        self._window_cache[key] = value
        return value

    def _drift(self, window: int) -> float:
        return 1.0 + 0.08 * (2.0 * _Draws(self.seed, self.unit, _S_SLOW, window).uniform() - 1.0)

    def _appliance(self, window: int, stream: int, window_s: float) -> _Appliance | None:
        d = _Draws(self.seed, self.unit, stream, window)
        start_of_window = window * window_s
        hour = self._local_hour(start_of_window)
        activity = self._profile_level(start_of_window, hour) / max(PROFILES[self.profile])
        appliance: _Appliance | None = None
        if stream == _S_SHORT:
            if d.uniform() < 0.35 * activity * self._appliance_rate:
                duration = 90.0 + 450.0 * d.uniform()
                start = start_of_window + (window_s - duration) * d.uniform()
                power = self.appliance_w * (0.6 + 0.8 * d.uniform())
                # resistive: kettles and hobs draw no reactive power
                appliance = _Appliance(start, start + duration, self._phase(d), power, 0.0)
        elif d.uniform() < 0.30 * activity * self._appliance_rate:
            duration = 1200.0 + 4800.0 * d.uniform()
            start = start_of_window + (window_s - duration) * d.uniform()
            power = self.appliance_w * (0.4 + 0.5 * d.uniform())
            # motors and compressors: power factor around 0.85
            appliance = _Appliance(start, start + duration, self._phase(d), power, power * 0.62)
        return appliance

    def _phase(self, d: _Draws) -> int:
        phase = int(3 * d.uniform()) % 3  # drawn on one phase too, so the draws stay aligned
        return phase if self.phases == 3 else 0

    def _ev_power_at(self, t: float) -> float:
        if self.ev_charger_w <= 0.0:
            return 0.0
        day = self._local_day(t)
        power = 0.0
        for d in (day - 1, day):
            for session in self._windowed(_S_EV, d, self._ev_day):
                if session.start <= t < session.end:
                    power += session.power_w
        return power

    def _ev_day(self, day: int) -> tuple[EvSession, ...]:
        """The session starting on local day `day`, if the car is plugged in that day."""
        d = _Draws(self.seed, self.unit, _S_EV, day)
        if d.uniform() >= _EV_DAY_PROBABILITY:
            return ()
        lo, hi = _EV_EVENING_HOURS if d.uniform() < _EV_EVENING_SHARE else _EV_DAY_HOURS
        start_h = lo + (hi - lo) * d.uniform()
        need_kwh = _EV_NEED_KWH[0] + (_EV_NEED_KWH[1] - _EV_NEED_KWH[0]) * d.uniform()
        # the car, not the wallbox, sets the rate: often a little below the charger's maximum
        power = self.ev_charger_w * (0.85 + 0.15 * d.uniform())
        hours = min(max(need_kwh * 1000.0 / power, _EV_HOURS[0]), _EV_HOURS[1])
        start = (day * 24.0 + start_h - self.utc_offset_h) * 3600.0
        return (EvSession(start, start + hours * 3600.0, power),)

    def _pv_at(self, t: float, hour: float) -> float:
        if self.pv_peak_w <= 0.0 or not 6.0 < hour < 20.0:
            return 0.0
        sun = math.sin(math.pi * (hour - 6.0) / 14.0) ** 1.5
        day = self._local_day(t)
        clear_day = self._windowed(_S_DAY, day, self._clear_day)
        passing = self._windowed(_S_CLOUD, math.floor(t / _CLOUD_WINDOW_S), self._cloud, clear_day)
        return self.pv_peak_w * 0.85 * sun * passing

    def _clear_day(self, day: int) -> float:
        return 0.4 + 0.6 * _Draws(self.seed, self.unit, _S_DAY, day).uniform()

    def _cloud(self, window: int, clear_day: float) -> float:
        d = _Draws(self.seed, self.unit, _S_CLOUD, window)
        return 1.0 if d.uniform() < clear_day else 0.3 + 0.4 * d.uniform()

    # -- what the meter shows ---------------------------------------------------------------

    def _read(self, t: float) -> dict[str, float]:
        k = math.floor(t / SLOT_S)
        slot = self._slot(k)
        hour = self._local_hour(t)
        bits = _mix(self._voltage_noise_key ^ (k & _M64))
        # Evening peak load on the feeder pulls every voltage down a little.
        sag = 3.0 * (_interpolate(PROFILES["household"], hour) - 1.0)

        values: dict[str, float] = {}
        volts: list[float] = []
        amps: list[float] = []
        angles: list[float] = []
        apparent: list[float] = []
        for i in range(self.phases):
            p, q = slot.power[i], slot.reactive[i]
            s = math.hypot(p, q)
            v_open = (
                self.nominal_voltage
                + self._voltage_offset
                + self._phase_voltage_offset[i]
                - sag
                + 0.25 * _unit_noise(bits, i)
            )
            v = v_open - self._supply_ohm * (p / v_open)
            v = min(max(v, self.nominal_voltage - 10.0), self.nominal_voltage + 10.0)
            current = s / v
            angle = math.atan2(q, p)
            names = _PHASE_NAMES[i]
            values[names[0]] = v
            values[names[1]] = current
            values[names[2]] = p
            values[names[3]] = s
            values[names[4]] = q
            values[names[5]] = p / s if s > 0 else 1.0
            values[names[6]] = math.degrees(angle)
            volts.append(v)
            amps.append(current)
            angles.append(angle)
            apparent.append(s)
        if self.phases == 1:
            return self._read_single_phase(t, values)

        p_total = slot.power_total
        q_total = slot.reactive_total
        s_total = sum(apparent)
        values["voltage_ln_avg"] = sum(volts) / 3.0
        values["current_avg"] = sum(amps) / 3.0
        values["current_sum"] = sum(amps)
        values["power_total"] = p_total
        values["apparent_power_total"] = s_total
        values["reactive_power_total"] = q_total
        values["power_factor_total"] = p_total / s_total if s_total > 0 else 1.0
        values["phase_angle_total"] = math.degrees(math.atan2(q_total, p_total))
        values["frequency"] = self._frequency(t)

        line = []
        for i, name in ((0, "voltage_l1_l2"), (1, "voltage_l2_l3"), (2, "voltage_l3_l1")):
            a, b = volts[i], volts[(i + 1) % 3]
            # phasors 120 degrees apart: |Va - Vb| = sqrt(Va^2 + Vb^2 + Va*Vb)
            values[name] = math.sqrt(a * a + b * b + a * b)
            line.append(values[name])
        values["voltage_ll_avg"] = sum(line) / 3.0
        re = sum(amps[i] * math.cos(_PHASE_SHIFT[i] - angles[i]) for i in range(3))
        im = sum(amps[i] * math.sin(_PHASE_SHIFT[i] - angles[i]) for i in range(3))
        values["current_neutral"] = math.hypot(re, im)

        e = self._energy
        values["energy_import"] = e["import"]
        values["energy_export"] = e["export"]
        values["energy_total"] = e["import"] + e["export"]
        values["energy_reactive_import"] = e["reactive_import"]
        values["energy_reactive_export"] = e["reactive_export"]
        values["energy_reactive_total"] = e["reactive_import"] + e["reactive_export"]
        return values

    def _read_single_phase(self, t: float, phase: dict[str, float]) -> dict[str, float]:
        # One phase: its power is the total; the SDM120 calls it that.
        values = {
            "voltage_l1": phase["voltage_l1"],
            "current_l1": phase["current_l1"],
            "power_total": phase["power_l1"],
            "apparent_power_total": phase["apparent_power_l1"],
            "reactive_power_total": phase["reactive_power_l1"],
            "power_factor_total": phase["power_factor_l1"],
            "phase_angle_total": phase["phase_angle_l1"],
            "frequency": self._frequency(t),
        }
        e = self._energy
        values["energy_import"] = e["import"]
        values["energy_export"] = e["export"]
        values["energy_total"] = e["import"] + e["export"]
        values["energy_reactive_import"] = e["reactive_import"]
        values["energy_reactive_export"] = e["reactive_export"]
        values["energy_reactive_total"] = e["reactive_import"] + e["reactive_export"]
        return values

    def _frequency(self, t: float) -> float:
        grid = _mix(self._grid_key ^ (math.floor(t / SLOT_S) & _M64))
        deviation = 0.025 * math.sin(2.0 * math.pi * t / 1800.0 + self._grid_phase)
        deviation += 0.008 * _unit_noise(grid, 0)
        deviation = min(max(deviation, -0.05), 0.05)
        return self.nominal_frequency + deviation


def _interpolate(table: Sequence[float], hour: float) -> float:
    lo = math.floor(hour) % 24
    frac = hour - math.floor(hour)
    return table[lo] * (1.0 - frac) + table[(lo + 1) % 24] * frac


_QUANTITIES: tuple[str, ...] = (
    *(f"{q}_l{n}" for q in ("voltage", "current", "power", "apparent_power",
                            "reactive_power", "power_factor", "phase_angle") for n in (1, 2, 3)),
    "voltage_ln_avg", "current_avg", "current_sum",
    "power_total", "apparent_power_total", "reactive_power_total",
    "power_factor_total", "phase_angle_total", "frequency",
    "voltage_l1_l2", "voltage_l2_l3", "voltage_l3_l1", "voltage_ll_avg", "current_neutral",
    "energy_import", "energy_export", "energy_total",
    "energy_reactive_import", "energy_reactive_export", "energy_reactive_total",
)

_QUANTITIES_1P: tuple[str, ...] = (
    "voltage_l1", "current_l1",
    "power_total", "apparent_power_total", "reactive_power_total",
    "power_factor_total", "phase_angle_total", "frequency",
    "energy_import", "energy_export", "energy_total",
    "energy_reactive_import", "energy_reactive_export", "energy_reactive_total",
)
