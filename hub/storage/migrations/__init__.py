"""Alembic migrations of the hub database, shipped in the package (see hub.storage.migrate)."""
