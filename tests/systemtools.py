"""Finding the system programs some tests drive (socat, mbpoll, mosquitto).

One rule for all of them: in CI (CI=true) a missing program fails the test, because
scripts/install-system-deps.sh must have installed it; on a developer's machine it skips.
"""

from __future__ import annotations

import os
import shutil

import pytest


def require_tool(tool: str, package: str, purpose: str, fallback: str | None = None) -> str:
    """The program's path (or `fallback` if executable), else fail in CI / skip elsewhere."""
    path = shutil.which(tool) or (fallback if fallback and os.access(fallback, os.X_OK) else None)
    if path is None:
        message = f"{tool} is not installed (Debian/Ubuntu: apt-get install {package}); {purpose}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
