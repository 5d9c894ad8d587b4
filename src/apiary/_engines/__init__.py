"""Database engines, chosen by the scheme of the database URL."""

from __future__ import annotations

import concurrent.futures

from apiary._engines._base import DeclaredStatement, Engine

__all__ = ["DeclaredStatement", "Engine", "open_engine"]


def open_engine(url: str, executor: concurrent.futures.Executor) -> Engine:
    """Open the engine a URL names: ``sqlite:///path``, ``postgresql://...`` or
    ``cluster:PATH``."""
    if not isinstance(url, str):
        raise TypeError(f"the database URL must be a str, not {type(url).__name__}")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        from apiary._engines.sqlite import SQLiteEngine

        return SQLiteEngine.from_url(url, executor)
    if scheme in ("postgresql", "postgres"):
        try:
            from apiary._engines.postgres import PostgresEngine
        except ImportError as exc:
            raise ImportError(
                f"PostgreSQL support needs psycopg ({exc}): pip install 'apiary[postgres]'"
            ) from exc

        return PostgresEngine.from_url(url, executor)
    if scheme == "cluster":
        from apiary._engines.cluster import ClusterEngine

        return ClusterEngine.from_url(url, executor)
    raise ValueError(
        f"unsupported database URL {url!r}: expected sqlite:///path/to/file.db "
        "(the embedded default), postgresql://user:password@host:port/database or "
        "cluster:PATH (a partitioned PostgreSQL cluster described by a TOML file)"
    )
