"""Batch ingest: checks (pure) and the gRPC stream with group commit (I/O)."""
