"""asyncpg, imported when a PostgreSQL store is first used, with the install hint if missing."""

from __future__ import annotations

from typing import Any

__all__ = ["import_asyncpg"]


def import_asyncpg(needed_by: str) -> Any:
    """The asyncpg module; ``ImportError`` saying that ``needed_by`` needs it and how to get it."""
    try:
        import asyncpg  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(f"{needed_by} needs asyncpg: pip install 'interlink[postgres]'") from exc
    return asyncpg
