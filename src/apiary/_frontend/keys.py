"""API keys of the HTTP frontend: create, list and revoke them; verify them, with a cache.

A key is ``apk_<key_id>_<secret>``: ``key_id`` is 12 hex characters (48 random bits; it
names the key in listings, logs and ``DELETE /v1/keys/{key_id}``), ``secret`` is 43
URL-safe characters (256 random bits). The table ``{sys}keys`` keeps the ID, the role
(``invoke`` or ``admin``), a label, and only the SHA-256 digest of the secret.

The functions over a :class:`~apiary._database.Database` run inside a transaction an
engine opened (``engine.transact``); :class:`KeyStore` wraps them for a :class:`Runtime`
and caches verifications (valid and invalid alike) for ``ttl`` seconds, so one frontend
reads a key once per ``ttl`` however many requests carry it, and a revocation takes effect
on every frontend within ``ttl``. The ``apiary keys`` command is in
:mod:`apiary._frontend.keys_cli`.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import hashlib
import hmac
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from apiary._database import Database, Statement
from apiary._errors import AuthenticationError, InvalidArgumentsError, PermissionDeniedError
from apiary._runtime import Runtime

#: The roles a key can have: ``admin`` keys may use every route, ``invoke`` keys the
#: routes that run workflows and read their status.
ROLES = ("invoke", "admin")
#: Which routes' roles a key's role allows.
_ALLOWS = {"invoke": frozenset({"invoke"}), "admin": frozenset({"invoke", "admin"})}

KEY_PREFIX = "apk_"
#: Longest label, in characters (labels come from ``POST /v1/keys`` bodies too).
MAX_LABEL = 200
#: Seconds a verification is cached (the frontend's ``--key-ttl``).
DEFAULT_TTL = 5.0
#: Most verifications a :class:`KeyStore` caches; invalid keys are cached too, so the
#: bound keeps a client sending random keys from growing the cache without limit.
DEFAULT_CACHE_SIZE = 10_000

# token_hex(6) is 12 lowercase hex digits; token_urlsafe(32) is 32 bytes in unpadded
# base64url, always 43 characters of [A-Za-z0-9_-] (so the secret may contain '_': the
# key is split by position, not at the last underscore).
_KEY_FORMAT = re.compile(r"apk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_KEY_ID = re.compile(r"[0-9a-f]{12}")
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(\S+) *")

# The only two messages verification gives: which part of a key was wrong (its format,
# its ID, its secret, or that it was revoked) would help someone guessing keys.
_MISSING = "missing API key (send Authorization: Bearer <key>)"
_INVALID = "invalid or revoked API key"


@dataclass(frozen=True)
class KeyInfo:
    """A key as listed and as verification returns it: everything but its secret."""

    key_id: str
    role: str
    label: str | None
    created_at: float
    revoked_at: float | None = None

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked."""
        return self.revoked_at is not None

    def allows(self, role_needed: str) -> bool:
        """Whether this key may use a route that needs ``role_needed``."""
        return role_needed in _ALLOWS.get(self.role, ())

    def to_json(self) -> dict[str, Any]:
        """The key as a JSON object (``GET /v1/keys``)."""
        return {
            "key_id": self.key_id,
            "role": self.role,
            "label": self.label,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


@dataclass(frozen=True)
class CreatedKey:
    """A key just created. ``key`` is the whole key; it is never shown again."""

    key_id: str
    role: str
    label: str | None
    created_at: float
    # Kept out of repr(), so that logging the object does not log the key.
    key: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """The key as a JSON object, the key itself included (``POST /v1/keys``)."""
        return {
            "key_id": self.key_id,
            "role": self.role,
            "label": self.label,
            "created_at": self.created_at,
            "key": self.key,
        }


# --------------------------------------------------------------------------------------
# Keys as strings
# --------------------------------------------------------------------------------------


def new_key() -> tuple[str, str]:
    """A new random ``(key_id, secret)``."""
    return secrets.token_hex(6), secrets.token_urlsafe(32)


def format_key(key_id: str, secret: str) -> str:
    """The key a client presents: ``apk_<key_id>_<secret>``."""
    return f"{KEY_PREFIX}{key_id}_{secret}"


def parse_key(presented: str) -> tuple[str, str] | None:
    """``(key_id, secret)`` of a well-formed key, else ``None``."""
    match = _KEY_FORMAT.fullmatch(presented)
    return (match[1], match[2]) if match else None


def secret_digest(secret: str) -> str:
    """What is stored of a secret: its SHA-256 digest, in hex.

    Not a slow password hash (bcrypt, scrypt, argon2): those make guessing a *low-entropy*
    password from its stolen hash expensive. A secret here is 256 random bits, which no
    one can guess from its digest however fast the hash, and a slow hash would cost
    every request on a cache miss tens of milliseconds of CPU for nothing.
    """
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The key in an ``Authorization: Bearer <key>`` header value, else ``None``.

    The scheme is case-insensitive (RFC 9110 §11.1); anything else (another scheme, no
    token, two tokens) gives ``None``, which :meth:`KeyStore.verify` reports as missing.
    """
    if not authorization:
        return None
    match = _BEARER.fullmatch(authorization)
    return match[1] if match else None


def _check_role(role: object, what: str) -> str:
    if not isinstance(role, str) or role not in ROLES:
        raise InvalidArgumentsError(f"{what} must be one of {', '.join(ROLES)}, not {role!r}")
    return role


def _check_label(label: object) -> str | None:
    if label is None:
        return None
    if not isinstance(label, str):
        raise InvalidArgumentsError(f"a key's label must be a str, not {type(label).__name__}")
    if len(label) > MAX_LABEL or "\x00" in label:
        raise InvalidArgumentsError(
            f"a key's label must be at most {MAX_LABEL} characters, without NUL"
        )
    return label


# --------------------------------------------------------------------------------------
# Statements and functions over a Database (each runs inside an engine's transaction)
# --------------------------------------------------------------------------------------

_KEY_COLUMNS = "key_id, role, label, created_at, revoked_at"

INSERT_KEY = Statement(
    "INSERT INTO {sys}keys (key_id, secret_hash, role, label, created_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (key_id) DO NOTHING",
    system=True,
)
GET_KEY = Statement(
    f"SELECT {_KEY_COLUMNS}, secret_hash FROM {{sys}}keys WHERE key_id = ?", system=True
)
LIST_KEYS = Statement(
    f"SELECT {_KEY_COLUMNS} FROM {{sys}}keys ORDER BY created_at, key_id", system=True
)
REVOKE_KEY = Statement(
    "UPDATE {sys}keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
    system=True,
)


def _info(row: tuple[Any, ...]) -> KeyInfo:
    key_id, role, label, created_at, revoked_at = row[:5]
    return KeyInfo(
        key_id, role, label, float(created_at), None if revoked_at is None else float(revoked_at)
    )


def insert_key(
    db: Database, key_id: str, digest: str, role: str, label: str | None, created_at: float
) -> bool:
    """Store a new key; ``False`` if ``key_id`` is taken (nothing changes then)."""
    return db.execute(INSERT_KEY, (key_id, digest, role, label, created_at)) == 1


def check_key(db: Database, key_id: str, digest: str) -> KeyInfo | None:
    """The key ``key_id`` if its secret has this digest and it is not revoked, else ``None``."""
    rows = db.query(GET_KEY, (key_id,))
    if not rows:
        return None
    info = _info(rows[0])
    # Constant-time, so response times do not tell how much of a guessed digest matched.
    # (An unknown key_id answers faster, but IDs are not secret: listings show them.)
    if not hmac.compare_digest(str(rows[0][5]), digest) or info.revoked:
        return None
    return info


def list_keys(db: Database) -> list[KeyInfo]:
    """Every key, revoked ones included, oldest first."""
    return [_info(row) for row in db.query(LIST_KEYS, ())]


def revoke_key(db: Database, key_id: str, revoked_at: float) -> bool:
    """Revoke a key; ``False`` if there is no such key or it was revoked already."""
    return db.execute(REVOKE_KEY, (revoked_at, key_id)) == 1


# --------------------------------------------------------------------------------------
# KeyStore
# --------------------------------------------------------------------------------------

# A cache entry: when it expires (time.monotonic()) and the key, or None for a key that
# did not verify.
_Entry = tuple[float, KeyInfo | None]


class KeyStore:
    """The API keys in a runtime's database, with a cache of verifications.

    Args:
        runtime: whose database holds the keys (its engine runs the transactions, its
            executor the lookups of :meth:`verify_async`).
        ttl: seconds a verification is remembered, the key's or a rejection's; a
            revocation takes effect within this time on every frontend. ``0`` disables
            the cache.
        max_entries: most verifications remembered (the oldest are dropped first).

    Safe to use from many threads and event loops at once.
    """

    def __init__(
        self, runtime: Runtime, ttl: float = DEFAULT_TTL, *, max_entries: int = DEFAULT_CACHE_SIZE
    ) -> None:
        if ttl < 0:
            raise ValueError(f"ttl must be >= 0 seconds, not {ttl!r}")
        if max_entries < 1:
            raise ValueError(f"max_entries must be >= 1, not {max_entries!r}")
        self._engine = runtime._engine
        self.ttl = float(ttl)
        self.max_entries = max_entries
        # Keyed by (key_id, digest of the secret): the plaintext secret is not kept in
        # memory either. Every entry lives ttl seconds, so insertion order is expiry
        # order: expired entries are always at the front.
        self._cache: collections.OrderedDict[tuple[str, str], _Entry] = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- administration --------------------------------------------------------------

    def create(self, role: str, label: str | None = None) -> CreatedKey:
        """Create a key with ``role`` (``"invoke"`` or ``"admin"``); its secret is in the result.

        Raises:
            InvalidArgumentsError: an unknown role, or a label that is not a short str.
        """
        role = _check_role(role, "a key's role")
        label = _check_label(label)
        # Two keys drawing the same 48-bit ID is all but impossible, but the primary key
        # would refuse the second, so draw again rather than fail.
        for _ in range(8):
            created = self._try_create(role, label)
            if created is not None:
                return created
        raise RuntimeError("could not draw an unused key ID")  # pragma: no cover

    def _try_create(self, role: str, label: str | None) -> CreatedKey | None:
        key_id, secret = new_key()
        digest = secret_digest(secret)
        created_at = time.time()
        inserted = self._engine.transact(
            lambda db: insert_key(db, key_id, digest, role, label, created_at), write=True
        )
        if not inserted:
            return None
        return CreatedKey(key_id, role, label, created_at, format_key(key_id, secret))

    def list(self) -> builtins.list[KeyInfo]:
        """Every key (never its secret), revoked ones included, oldest first."""
        return self._engine.transact(list_keys, write=False)

    def revoke(self, key_id: str) -> bool:
        """Revoke a key now; ``False`` if there is no such key or it was revoked already.

        This store forgets the key at once; other frontends within their ``ttl``.
        """
        if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
            return False  # no key has such an ID (and PostgreSQL refuses text with NUL)
        revoked_at = time.time()
        revoked = self._engine.transact(lambda db: revoke_key(db, key_id, revoked_at), write=True)
        with self._lock:
            for entry in [entry for entry in self._cache if entry[0] == key_id]:
                del self._cache[entry]
        return revoked

    # -- verification ----------------------------------------------------------------

    def verify(self, presented: str | None) -> KeyInfo:
        """The key ``presented`` (``apk_...``, without ``Bearer``) if it is valid.

        Raises:
            AuthenticationError: the key is missing, malformed, unknown, has the wrong
                secret, or was revoked (the message says only "missing" or "invalid or
                revoked").
        """
        entry = _entry_of(presented)
        found = self._recall(entry)
        if found is None:
            info = self._engine.transact(lambda db: check_key(db, *entry), write=False)
            self._remember(entry, info)
        else:
            info = found[1]
        if info is None:
            raise AuthenticationError(_INVALID)
        return info

    async def verify_async(self, presented: str | None) -> KeyInfo:
        """:meth:`verify` for an event loop: a lookup runs on the runtime's executor."""
        entry = _entry_of(presented)
        found = self._recall(entry)
        if found is None:
            loop = asyncio.get_running_loop()
            info = await loop.run_in_executor(
                self._engine.executor,
                lambda: self._engine.transact(lambda db: check_key(db, *entry), write=False),
            )
            self._remember(entry, info)
        else:
            info = found[1]
        if info is None:
            raise AuthenticationError(_INVALID)
        return info

    def authorize(self, presented: str | None, role_needed: str) -> KeyInfo:
        """:meth:`verify` the key, then check its role allows a route that needs ``role_needed``.

        Admin keys may use every route; invoke keys only ``invoke`` routes.

        Raises:
            AuthenticationError: see :meth:`verify`.
            PermissionDeniedError: the key's role does not allow the route.
            InvalidArgumentsError: ``role_needed`` is not a role.
        """
        role_needed = _check_role(role_needed, "the role a route needs")
        return _permit(self.verify(presented), role_needed)

    async def authorize_async(self, presented: str | None, role_needed: str) -> KeyInfo:
        """:meth:`authorize` for an event loop."""
        role_needed = _check_role(role_needed, "the role a route needs")
        return _permit(await self.verify_async(presented), role_needed)

    # -- the cache -------------------------------------------------------------------

    def _recall(self, entry: tuple[str, str]) -> _Entry | None:
        now = time.monotonic()
        with self._lock:
            found = self._cache.get(entry)
            if found is not None and found[0] <= now:
                del self._cache[entry]
                found = None
        return found

    def _remember(self, entry: tuple[str, str], info: KeyInfo | None) -> None:
        if self.ttl <= 0:
            return
        now = time.monotonic()
        with self._lock:
            self._cache.pop(entry, None)
            while self._cache and next(iter(self._cache.values()))[0] <= now:
                self._cache.popitem(last=False)
            while len(self._cache) >= self.max_entries:
                self._cache.popitem(last=False)
            self._cache[entry] = (now + self.ttl, info)

    def __repr__(self) -> str:
        return f"<apiary KeyStore ttl={self.ttl:g}s cached={len(self._cache)}>"


def _entry_of(presented: str | None) -> tuple[str, str]:
    """The cache entry of a presented key: ``(key_id, digest of its secret)``."""
    if presented is None or presented == "":
        raise AuthenticationError(_MISSING)
    parsed = parse_key(presented) if isinstance(presented, str) else None
    if parsed is None:
        raise AuthenticationError(_INVALID)
    key_id, secret = parsed
    return key_id, secret_digest(secret)


def _permit(info: KeyInfo, role_needed: str) -> KeyInfo:
    if not info.allows(role_needed):
        raise PermissionDeniedError(
            f"this route needs an {role_needed} key; key {info.key_id} has role {info.role!r}"
        )
    return info
