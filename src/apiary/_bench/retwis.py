"""Retwis, the Twitter clone (as in the Apiary paper).

Operations (``MIX``: 85% timeline, 10% post, 5% follow):

* ``timeline(user_id)``: read-only; the 10 latest posts of the users ``user_id``
  follows (one join of ``follows`` and ``posts``, newest first). ``posts_by_time`` lets
  both engines walk the posts from the newest and look each author up in ``follows``,
  stopping at the tenth match (about 240 posts read at the default scale), instead of
  reading every post of 50 users (PostgreSQL chose a scan of all posts and a hash join:
  0.3 ms against 2.5 ms under ``EXPLAIN ANALYZE`` with 15,000 posts; SQLite 54 against
  191 µs).
* ``post(user_id, post_id, ts, body)``: a new post.
* ``follow(follower, followee)``: start following (nothing if already following);
  returns whether a follow was added.

Data (``SCALES``): ``users`` users, each following ``follows`` others chosen at random and
with ``posts`` posts. Default: 1,000 users, 50 follows each, 5 posts each (5,000 posts);
``tiny``: 50 users, 5 follows, 2 posts. Operations pick users uniformly at random; a
post's time stamp is the client's clock in microseconds, its ID unique.

Invariants checked after a run: the posts are the initial ones plus one per ``post``
call; the follows the initial ones plus one per ``follow`` call that answered ``true``;
nobody follows themselves.

``logged_app`` adds manual logging (one ``app_log`` row per statement; see
:mod:`apiary._bench.hotel`). Standard library and ``apiary`` only: shipped into
PostgreSQL. SQL texts are module constants (``*_SQL``) for the baselines.
"""

# Workflow bodies call functions without their context: the registrar traces the calls.
# mypy: disable-error-code="call-arg, arg-type"

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import apiary

NAME = "retwis"

SCALES: dict[str, dict[str, int]] = {
    "tiny": {"users": 50, "follows": 5, "posts": 2},
    "default": {"users": 1_000, "follows": 50, "posts": 5},
}

MIX: dict[str, float] = {"timeline": 0.85, "post": 0.10, "follow": 0.05}

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    user_id INTEGER PRIMARY KEY,
    name    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS follows (
    follower INTEGER NOT NULL,
    followee INTEGER NOT NULL,
    PRIMARY KEY (follower, followee)
);
CREATE TABLE IF NOT EXISTS posts (
    post_id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    ts      BIGINT NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS posts_by_time ON posts (ts, post_id);
"""

LOG_SCHEMA = """
CREATE TABLE IF NOT EXISTS app_log (
    invocation_id TEXT,
    function      TEXT NOT NULL,
    op            TEXT NOT NULL,
    tbl           TEXT NOT NULL,
    row_keys      TEXT NOT NULL,
    logged_at     DOUBLE PRECISION NOT NULL
);
"""

TIMELINE_SQL = (
    "SELECT p.post_id, p.user_id, p.ts, p.body FROM follows f "
    "JOIN posts p ON p.user_id = f.followee WHERE f.follower = ? "
    "ORDER BY p.ts DESC, p.post_id DESC LIMIT 10"
)
POST_SQL = "INSERT INTO posts (post_id, user_id, ts, body) VALUES (?, ?, ?, ?)"
FOLLOW_SQL = (
    "INSERT INTO follows (follower, followee) VALUES (?, ?) "
    "ON CONFLICT (follower, followee) DO NOTHING"
)
LOG_SQL = (
    "INSERT INTO app_log (invocation_id, function, op, tbl, row_keys, logged_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

TIMELINE = apiary.sql(TIMELINE_SQL)
POST = apiary.sql(POST_SQL)
FOLLOW = apiary.sql(FOLLOW_SQL)
LOG = apiary.sql(LOG_SQL)

#: Posts a timeline shows.
TIMELINE_LENGTH = 10


def _log(ctx: apiary.TxContext, log: Any, function: str, op: str, table: str, keys: Any) -> None:
    """Manual logging: one ``app_log`` row per statement (only in ``logged_app``)."""
    if log is not None:
        ctx.execute(log, ctx.invocation_id, function, op, table, json.dumps(keys), time.time())


def _build(name: str, *, logged: bool) -> apiary.App:
    """The retwis app; with ``logged``, every function also logs what it read and wrote."""
    app = apiary.App(name)
    app.schema(SCHEMA + (LOG_SCHEMA if logged else ""))
    log = LOG if logged else None

    @app.function
    def get_timeline(ctx: apiary.TxContext, user_id: int) -> list[list[Any]]:
        """The latest posts of the users ``user_id`` follows, newest first."""
        posts = [list(row) for row in ctx.query(TIMELINE, user_id)]
        _log(ctx, log, "get_timeline", "read", "posts", [p[0] for p in posts])
        return posts

    @app.function
    def add_post(ctx: apiary.TxContext, user_id: int, post_id: str, ts: int, body: str) -> bool:
        """Store a post."""
        ctx.execute(POST, post_id, user_id, ts, body)
        _log(ctx, log, "add_post", "insert", "posts", [post_id])
        return True

    @app.function
    def add_follow(ctx: apiary.TxContext, follower: int, followee: int) -> bool:
        """Follow; whether the follow is new."""
        added = ctx.execute(FOLLOW, follower, followee) == 1
        _log(ctx, log, "add_follow", "insert", "follows", [follower, followee])
        return added

    @app.workflow
    def timeline(user_id: int):  # type: ignore[no-untyped-def]
        """The user's timeline (read-only)."""
        return get_timeline(user_id)

    @app.workflow
    def post(user_id: int, post_id: str, ts: int, body: str):  # type: ignore[no-untyped-def]
        """Post a message."""
        return add_post(user_id, post_id, ts, body)

    @app.workflow
    def follow(follower: int, followee: int):  # type: ignore[no-untyped-def]
        """Follow a user."""
        return add_follow(follower, followee)

    return app


app = _build("bench_retwis", logged=False)
logged_app = _build("bench_retwis_logged", logged=True)


def _others(rng: random.Random, user: int, users: int, count: int) -> list[int]:
    """``count`` distinct users other than ``user``."""
    picked = rng.sample(range(1, users), min(count, users - 1))
    return [u if u < user else u + 1 for u in picked]


def data(p: Mapping[str, int]) -> Iterator[tuple[str, Sequence[str], Iterator[tuple[Any, ...]]]]:
    """The initial rows: ``(table, columns, rows)`` per table."""
    users = range(1, p["users"] + 1)
    yield "users", ("user_id", "name"), ((u, f"user {u}") for u in users)
    rng = random.Random(17)
    yield (
        "follows",
        ("follower", "followee"),
        ((u, v) for u in users for v in _others(rng, u, p["users"], p["follows"])),
    )
    yield (
        "posts",
        ("post_id", "user_id", "ts", "body"),
        (
            (f"init-{u}-{n}", u, n * 1_000 + u, f"post {n} of user {u}")
            for u in users
            for n in range(p["posts"])
        ),
    )


def operation(
    op: str, rng: random.Random, p: Mapping[str, int], uid: str
) -> tuple[str, dict[str, Any]]:
    """The workflow and arguments of one ``op``; ``uid`` is unique to this operation."""
    user_id = rng.randint(1, p["users"])
    if op == "timeline":
        return "timeline", {"user_id": user_id}
    if op == "post":
        ts = time.time_ns() // 1_000
        body = f"post {uid} by user {user_id}: " + "x" * rng.randint(10, 140)
        return "post", {"user_id": user_id, "post_id": f"p{uid}", "ts": ts, "body": body}
    (followee,) = _others(rng, user_id, p["users"], 1)
    return "follow", {"follower": user_id, "followee": followee}


def check(
    query: Callable[[str], list[tuple[Any, ...]]], p: Mapping[str, int], done: Mapping[str, int]
) -> str:
    """Check the invariants after a run (see the module docstring); return a summary."""
    posts = query("SELECT count(*) FROM posts")[0][0]
    expected = p["users"] * p["posts"] + done.get("post", 0)
    if posts != expected:
        raise AssertionError(f"retwis: {posts} posts, expected {expected}")
    follows = query("SELECT count(*) FROM follows")[0][0]
    initial = p["users"] * min(p["follows"], p["users"] - 1)
    if follows != initial + done.get("follow=true", 0):
        raise AssertionError(
            f"retwis: {follows} follows, expected {initial} + {done.get('follow=true', 0)}"
        )
    selfish = query("SELECT count(*) FROM follows WHERE follower = followee")[0][0]
    if selfish:
        raise AssertionError(f"retwis: {selfish} users follow themselves")
    return f"{posts:,} posts and {follows:,} follows as expected; nobody follows themselves"
