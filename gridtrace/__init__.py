"""gridtrace: meter readings turned into evidence. This package holds the one
`gridtrace` command and what its parts share (config files, the demo)."""

__version__ = "0.1.0"
