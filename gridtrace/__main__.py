"""`python -m gridtrace`: the same as the `gridtrace` command."""

import os
import sys

# `python -m` puts the working directory first on the import path; a folder named
# like one of our packages there (e.g. the `hub/` that `hub init --dir hub` makes)
# would shadow the installed package.
sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]

from gridtrace.cli import main  # noqa: E402

sys.exit(main())
