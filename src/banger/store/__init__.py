"""SQLite store: one database, WAL mode, versioned migrations, small repositories."""

from banger.store.db import Store

__all__ = ["Store"]
