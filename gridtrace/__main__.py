import sys

from gridtrace.cli import main

sys.exit(main())
