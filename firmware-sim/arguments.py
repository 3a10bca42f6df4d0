"""Command-line argument types shared by the `gridtrace sim` commands (argparse `type=`)."""

from __future__ import annotations

import argparse

__all__ = ["meter_count"]


def meter_count(text: str, most: int | None = None) -> int:
    """A number of simulated meters: 1 or more, at most `most` if given."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if count < 1 or (most is not None and count > most):
        expected = f"1..{most}" if most is not None else "1 or more"
        raise argparse.ArgumentTypeError(f"{count} meters: expected {expected}")
    return count
