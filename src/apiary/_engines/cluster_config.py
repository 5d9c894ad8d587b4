"""The configuration of a partitioned cluster: the TOML file ``cluster:PATH`` names.

See :mod:`apiary._engines.cluster` for the file's fields and what the cluster does.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from psycopg.conninfo import conninfo_to_dict

from apiary._errors import ApiaryError

ROUTINGS = ("direct", "proxy")

# Options of a partition URL that are Apiary's, not libpq's (PostgresEngine.from_url).
_OWN_OPTIONS = ("placement", "pool_min", "pool_max", "pool_timeout")


class ClusterConfigError(ApiaryError, ValueError):
    """The cluster configuration is missing or wrong (names the file and the field)."""


class ClusterConfig:
    """A parsed cluster configuration (the fields: :mod:`apiary._engines.cluster`)."""

    def __init__(
        self, partitions: Sequence[str], proxy: str | None, routing: str, source: str
    ) -> None:
        self.partitions = list(partitions)
        self.proxy = proxy
        self.routing = routing
        self.source = source

    @classmethod
    def from_url(cls, url: str) -> ClusterConfig:
        """Read ``cluster:PATH[?routing=direct|proxy]``."""
        rest = url.split(":", 1)[1]
        rest, _, query = rest.partition("?")
        path = urlsplit("cluster:" + rest).path if rest.startswith("//") else rest
        if not path:
            raise ClusterConfigError(f"{url!r}: expected cluster:PATH to a TOML file")
        try:
            data = tomllib.loads(Path(path).read_text())
        except FileNotFoundError:
            raise ClusterConfigError(f"cluster configuration {path!r} does not exist") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ClusterConfigError(f"cluster configuration {path!r}: {exc}") from None
        options = dict(parse_qsl(query))
        unknown = sorted(set(options) - {"routing"})
        if unknown:
            raise ClusterConfigError(f"{url!r}: unknown option(s) {', '.join(unknown)}")
        if "routing" in options:
            data["routing"] = options["routing"]
        return cls.from_dict(data, path)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<cluster>") -> ClusterConfig:
        """Check the fields; raise :class:`ClusterConfigError` naming the wrong one."""
        unknown = sorted(set(data) - {"partitions", "proxy", "routing"})
        if unknown:
            raise ClusterConfigError(f"{source}: unknown field(s) {', '.join(unknown)}")
        parts = data.get("partitions")
        if not isinstance(parts, list) or not parts:
            raise ClusterConfigError(f"{source}: 'partitions' must be a non-empty list of URLs")
        count = len(parts)
        if count & (count - 1):
            raise ClusterConfigError(
                f"{source}: 'partitions' lists {count} databases; the count must be a power "
                "of two (1, 2, 4, 8, ...) so that keys split evenly and PL/Proxy can route"
            )
        for index, part in enumerate(parts):
            if not isinstance(part, str) or not part.startswith(("postgresql://", "postgres://")):
                raise ClusterConfigError(
                    f"{source}: partitions[{index}] must be a postgresql:// URL, not {part!r}"
                )
        if len(set(map(identity, parts))) != count:
            raise ClusterConfigError(f"{source}: 'partitions' names one database twice")
        proxy = data.get("proxy")
        if proxy is not None and (
            not isinstance(proxy, str) or not proxy.startswith(("postgresql://", "postgres://"))
        ):
            raise ClusterConfigError(
                f"{source}: 'proxy' must be a postgresql:// URL, not {proxy!r}"
            )
        if proxy is not None and identity(proxy) in set(map(identity, parts)):
            raise ClusterConfigError(f"{source}: 'proxy' must be a database of its own")
        routing = data.get("routing", "direct")
        if routing not in ROUTINGS:
            raise ClusterConfigError(
                f"{source}: 'routing' must be one of {', '.join(ROUTINGS)}, not {routing!r}"
            )
        if routing == "proxy" and proxy is None:
            raise ClusterConfigError(f"{source}: routing = 'proxy' needs a 'proxy' database URL")
        return cls(parts, proxy, routing, source)


def libpq_params(url: str) -> dict[str, Any]:
    """A URL's libpq parameters (Apiary's own options removed)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k not in _OWN_OPTIONS]
    clean = parts._replace(query="&".join(f"{k}={v}" for k, v in query)).geturl()
    return conninfo_to_dict(clean)


def identity(url: str) -> tuple[str, str, str]:
    params = libpq_params(url)
    return (
        str(params.get("host", "")),
        str(params.get("port", "5432")),
        str(params.get("dbname", "")),
    )
