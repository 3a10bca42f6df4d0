"""Measurement certificates: the JSON document, how a hub builds it, and the offline verifier.

Only `build` touches the hub's store; `document`, `trust` and `verify` need
nothing but `protos` and cryptography, so a clerk's machine can verify.
"""
