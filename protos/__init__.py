"""The wire contract: what a gateway and a hub must agree on byte for byte.

`readings.proto` and `ingest.proto` define the messages on the wire; `records`
holds the same structures as plain dataclasses; `canonical` produces the bytes
that are hashed and signed; `merkle` is RFC 6962/9162 hashing; `signing` is
Ed25519 key handling. See docs/formats.md.
"""
