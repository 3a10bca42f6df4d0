"""The substation hub: ingest, storage, chain, certificates.

`hub.certificates` (the offline verifier and the trust file) depends only on
`protos` and cryptography, so clerks can verify without the hub's database stack.
"""
