"""The hub's database, through SQLAlchemy Core: SQLite by default, PostgreSQL to follow."""
