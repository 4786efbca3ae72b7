"""Apply the plain SQL files in `migrations/` in order, once each.

Each file runs in its own transaction and is recorded in `schema_migrations`
with its checksum. A session-level advisory lock serialises concurrent
runners: a second daemon waits, then finds nothing left to apply.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import asyncpg

from candled.errors import CandledError

# Any fixed 64-bit number; it only has to be the same in every candled process.
LOCK_KEY = 0x63616E646C6564  # "candled"
_NAME = re.compile(r"^(\d+)_[\w-]+\.sql$")


def default_dir() -> Traversable:
    """The SQL files shipped inside the package (`candled/migrations`, in a
    checkout a link to the repository's `migrations/`)."""
    found = resources.files("candled").joinpath("migrations")
    if not found.is_dir():
        raise FileNotFoundError(f"no migrations directory in the candled package ({found})")
    return found


@dataclass(frozen=True)
class Migration:
    """One `NNN_name.sql` file, applied once, in version order."""

    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        """Recorded when applied, so a migration edited afterwards is refused."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


class MigrationError(CandledError):
    """The migrations cannot be applied: a misnamed, doubled or edited file."""


def discover(directory: Path | Traversable) -> list[Migration]:
    """The migrations in `directory`, in version order; a misnamed or doubled file is an error."""
    found: dict[int, Migration] = {}
    files = (p for p in directory.iterdir() if p.name.endswith(".sql"))
    for path in sorted(files, key=lambda p: p.name):
        m = _NAME.match(path.name)
        if not m:
            raise MigrationError(f"{path.name}: expected NNN_name.sql")
        version = int(m.group(1))
        if version in found:
            raise MigrationError(f"{path.name}: version {version} used twice")
        found[version] = Migration(version, path.name, path.read_text(encoding="utf-8"))
    return [found[v] for v in sorted(found)]


async def migrate(conn: asyncpg.Connection, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names applied by this call."""
    migrations = discover(directory or default_dir())
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, name, checksum FROM schema_migrations")
        applied = {r["version"]: r for r in rows}
        done: list[str] = []
        for m in migrations:
            if m.version in applied:
                if applied[m.version]["checksum"] != m.checksum:
                    raise MigrationError(
                        f"{m.name} was changed after it was applied; add a new migration instead"
                    )
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    m.version,
                    m.name,
                    m.checksum,
                )
            done.append(m.name)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
