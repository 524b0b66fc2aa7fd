"""The SQLite connection, migrations and typed row access.

The daemon is the only writer. It is single-threaded asyncio with short
statements, so one connection with `check_same_thread=False` guarded by a lock is
enough; WAL lets the CLI's read-only tools (and tests) read concurrently.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from banger.store.migrations import MIGRATIONS

JSON_COLUMNS = {"handle", "timings", "info", "result", "error"}


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in row.keys():  # noqa: SIM118 - sqlite3.Row is not a mapping
        val = row[key]
        if key in JSON_COLUMNS and isinstance(val, str):
            val = json.loads(val)
        out[key] = val
    return out


def _encode(values: dict[str, Any]) -> dict[str, Any]:
    return {
        k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v for k, v in values.items()
    }


class Store:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._synchronous = int(self._db.execute("PRAGMA synchronous").fetchone()[0])
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self.migrate()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        row = self._db.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0)

    def migrate(self) -> None:
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = self.schema_version
            for version, script in enumerate(MIGRATIONS, start=1):
                if version <= current:
                    continue
                # executescript commits implicitly, so the version row goes in the
                # same script to keep "schema applied" and "version recorded" atomic.
                self._db.executescript(
                    "BEGIN;\n"
                    + script
                    + f"\nINSERT INTO schema_version VALUES ({version}, {time.time()});\nCOMMIT;"
                )

    # -- generic row helpers used by the repositories below --------------------------

    def insert(self, table: str, values: dict[str, Any]) -> None:
        vals = _encode(values)
        cols = ", ".join(vals)
        marks = ", ".join(f":{k}" for k in vals)
        with self._lock:
            self._db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", vals)

    def upsert(self, table: str, key: str, values: dict[str, Any], *, durable: bool = True) -> None:
        """Insert or update one row. `durable=False` skips the fsync of the commit
        (`synchronous=NORMAL` for it): the row survives a crash of this process (the
        write-ahead log is in the page cache), not one of the host; the next durable
        commit syncs it too. For the steps of a create or start, each of which would
        otherwise cost an fsync on the way to a running guest."""
        vals = _encode(values)
        cols = ", ".join(vals)
        marks = ", ".join(f":{k}" for k in vals)
        updates = ", ".join(f"{k}=excluded.{k}" for k in vals if k != key)
        with self._lock:
            if not durable:
                self._db.execute("PRAGMA synchronous=NORMAL")
            try:
                self._db.execute(
                    f"INSERT INTO {table} ({cols}) VALUES ({marks}) "
                    f"ON CONFLICT({key}) DO UPDATE SET {updates}",
                    vals,
                )
            finally:
                if not durable:
                    self._db.execute(f"PRAGMA synchronous={self._synchronous}")

    def update(self, table: str, key: str, key_value: Any, values: dict[str, Any]) -> None:
        vals = _encode(values)
        sets = ", ".join(f"{k}=:{k}" for k in vals)
        with self._lock:
            self._db.execute(
                f"UPDATE {table} SET {sets} WHERE {key}=:_key", {**vals, "_key": key_value}
            )

    def delete(self, table: str, key: str, key_value: Any) -> None:
        with self._lock:
            self._db.execute(f"DELETE FROM {table} WHERE {key}=?", (key_value,))

    def get(self, table: str, key: str, key_value: Any) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute(f"SELECT * FROM {table} WHERE {key}=?", (key_value,)).fetchone()
        return _decode(row) if row else None

    def all(self, table: str, order: str = "rowid") -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
        return [_decode(r) for r in rows]

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(sql, params).fetchall()
        return [_decode(r) for r in rows]
