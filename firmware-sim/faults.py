"""Faults a simulated meter can be told to show, as values and as command-line specs.

A `Fault` only describes the misbehaviour; the servers carry it out. The specs are what
``gridtrace sim modbus --fault UNIT=SPEC`` takes:

=====================  ======================================================================
``timeout``            the meter never answers (as an empty address on an RS-485 bus)
``exception:CODE``     every request is answered with Modbus exception CODE
``stuck``              the registers freeze at their last values (a hung meter CPU)
``counter-reset``      the energy counters restart from 0 once (now, or ``counter-reset:S``
                       S seconds after the fault is set), then keep integrating
``swapped-words``      32- and 64-bit values are served in the opposite word order
``clock-drift:PPM``    the meter's clock runs PPM parts per million fast (negative: slow),
                       so its counters drift away from the true energy
=====================  ======================================================================
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from pymodbus.constants import ExcCodes

__all__ = ["EXCEPTION_CODES", "FAULT_SPECS", "Fault", "FaultKind"]

#: Modbus exception codes a meter (or a gateway in front of it) can answer.
EXCEPTION_CODES: tuple[int, ...] = tuple(int(code) for code in ExcCodes)

#: The spec forms `Fault.parse` accepts, for help texts and error messages.
FAULT_SPECS = (
    "timeout",
    "exception:CODE",
    "stuck",
    "counter-reset[:SECONDS]",
    "swapped-words",
    "clock-drift:PPM",
)


class FaultKind(enum.Enum):
    TIMEOUT = "timeout"
    EXCEPTION = "exception"
    STUCK = "stuck"
    COUNTER_RESET = "counter-reset"
    SWAPPED_WORDS = "swapped-words"
    CLOCK_DRIFT = "clock-drift"


@dataclass(frozen=True)
class Fault:
    """A misbehaviour of one simulated meter; build with the class methods or `parse`.

    ``code`` belongs to an exception fault, ``ppm`` to a clock drift and ``after_s`` to a
    counter reset; every other combination is refused.
    """

    kind: FaultKind
    code: int | None = None
    ppm: float | None = None
    after_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind is FaultKind.EXCEPTION:
            if self.code not in EXCEPTION_CODES:
                raise ValueError(
                    f"Modbus exception code {self.code} cannot be simulated; "
                    f"use one of {', '.join(str(c) for c in EXCEPTION_CODES)}"
                )
        elif self.code is not None:
            raise ValueError("only an exception fault has a code")
        if self.kind is FaultKind.CLOCK_DRIFT:
            if self.ppm is None or not math.isfinite(self.ppm) or not -1e6 < self.ppm < 1e6:
                raise ValueError(
                    f"clock drift {self.ppm} ppm: give parts per million between -999999 "
                    "and 999999 (a cheap quartz is off by about 20-100)"
                )
        elif self.ppm is not None:
            raise ValueError("only a clock-drift fault has a ppm")
        if self.kind is FaultKind.COUNTER_RESET:
            if self.after_s is None or not math.isfinite(self.after_s) or self.after_s < 0:
                raise ValueError(f"counter reset after {self.after_s} s: give 0 or more seconds")
        elif self.after_s is not None:
            raise ValueError("only a counter-reset fault has a delay")

    @classmethod
    def timeout(cls) -> Fault:
        """The meter never answers."""
        return cls(FaultKind.TIMEOUT)

    @classmethod
    def exception(cls, code: int) -> Fault:
        """The meter answers every request with Modbus exception `code`."""
        return cls(FaultKind.EXCEPTION, code=code)

    @classmethod
    def stuck(cls) -> Fault:
        """The registers freeze at their last values."""
        return cls(FaultKind.STUCK)

    @classmethod
    def counter_reset(cls, after_s: float = 0.0) -> Fault:
        """The energy counters restart from 0, `after_s` seconds after the fault is set."""
        return cls(FaultKind.COUNTER_RESET, after_s=float(after_s))

    @classmethod
    def swapped_words(cls) -> Fault:
        """Multi-register values are served in the opposite word order."""
        return cls(FaultKind.SWAPPED_WORDS)

    @classmethod
    def clock_drift(cls, ppm: float) -> Fault:
        """The meter's clock runs `ppm` parts per million fast (negative: slow)."""
        return cls(FaultKind.CLOCK_DRIFT, ppm=float(ppm))

    @classmethod
    def parse(cls, text: str) -> Fault:
        """A fault from its spec (see the module docstring), as the command line takes it."""
        spec = text.strip().lower()
        kind, sep, arg = spec.partition(":")
        arg = arg.strip()
        try:
            if kind in ("timeout", "stuck", "swapped-words") and not sep:
                return {"timeout": cls.timeout, "stuck": cls.stuck, "swapped-words": cls.swapped_words}[kind]()
            if kind == "exception" and arg.isdigit():
                return cls.exception(int(arg))
            if kind == "counter-reset":
                return cls.counter_reset(float(arg) if sep else 0.0)
            if kind == "clock-drift" and sep:
                return cls.clock_drift(float(arg))
        except ValueError as exc:
            raise ValueError(f"fault {text!r}: {exc}") from None
        raise ValueError(
            f"fault {text!r} is not one of {', '.join(FAULT_SPECS)} "
            "(e.g. exception:2, counter-reset:600, clock-drift:50)"
        )

    def __str__(self) -> str:
        if self.kind is FaultKind.EXCEPTION:
            return f"exception:{self.code}"
        if self.kind is FaultKind.CLOCK_DRIFT:
            return f"clock-drift:{self.ppm:g}"
        if self.kind is FaultKind.COUNTER_RESET and self.after_s:
            return f"counter-reset:{self.after_s:g}"
        return self.kind.value
