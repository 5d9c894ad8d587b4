"""The PL/Python pitfall: application code that catches every exception.

PL/Python runs each statement in a subtransaction, so a statement that failed (a
serialization failure on a hot row, a deadlock, a unique violation) is rolled back alone
and the function goes on; if the code swallowed the error, a naive runtime would commit
the transaction without that write. These functions swallow everything on purpose:
the platform must still never commit a partial transaction.

Sequence ``pf_attempts`` counts attempts: ``nextval`` is not transactional, so it shows
how often a unit ran, retries included, even though retried attempts rolled back.
"""

from __future__ import annotations

from typing import Any

import apiary

app = apiary.App("pg_pitfalls")
app.schema("""
CREATE TABLE IF NOT EXISTS pf_counters (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pf_hits (k TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS pf_accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pf_moves (src INTEGER NOT NULL, dst INTEGER NOT NULL,
                                     amount INTEGER NOT NULL);
CREATE SEQUENCE IF NOT EXISTS pf_attempts;
""")

ADD_COUNTER = apiary.sql("INSERT INTO pf_counters (k, v) VALUES (?, 0) ON CONFLICT DO NOTHING")
ADD_ACCOUNT = apiary.sql(
    "INSERT INTO pf_accounts (id, balance) VALUES (?, ?) ON CONFLICT DO NOTHING"
)
BUMP = apiary.sql("UPDATE pf_counters SET v = v + 1 WHERE k = ?")
HIT = apiary.sql("INSERT INTO pf_hits (k) VALUES (?)")
DEBIT = apiary.sql("UPDATE pf_accounts SET balance = balance - ? WHERE id = ?")
CREDIT = apiary.sql("UPDATE pf_accounts SET balance = balance + ? WHERE id = ?")
MOVED = apiary.sql("INSERT INTO pf_moves (src, dst, amount) VALUES (?, ?, ?)")
ATTEMPT = apiary.sql("SELECT nextval('pf_attempts')")
ATTEMPTS = apiary.sql("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM pf_attempts")
COUNTER = apiary.sql("SELECT v FROM pf_counters WHERE k = ?")
HITS = apiary.sql("SELECT count(*) FROM pf_hits WHERE k = ?")
MONEY = apiary.sql("SELECT count(*), sum(balance) FROM pf_accounts")
MOVES = apiary.sql("SELECT count(*), coalesce(sum(amount), 0) FROM pf_moves")


@app.function
def seed(ctx: apiary.TxContext, keys: list[str], accounts: list[int], balance: int) -> int:
    """Counters at zero and accounts holding ``balance`` each."""
    for key in keys:
        ctx.execute(ADD_COUNTER, key)
    for account in accounts:
        ctx.execute(ADD_ACCOUNT, account, balance)
    return len(keys) + len(accounts)


# The try/except blocks below are the pitfall under test (ruff would suggest suppress()).


@app.function
def bump(ctx: apiary.TxContext, key: str) -> bool:
    """Increment a counter and log a hit, swallowing every ``Exception``."""
    ctx.query(ATTEMPT)
    try:  # noqa: SIM105
        ctx.execute(BUMP, key)
    except Exception:
        pass
    try:  # noqa: SIM105
        ctx.execute(HIT, key)
    except Exception:
        pass
    return True


@app.function
def bump_hard(ctx: apiary.TxContext, key: str) -> bool:
    """:func:`bump`, swallowing even ``BaseException`` (Apiary's conflict signal)."""
    ctx.query(ATTEMPT)
    try:  # noqa: SIM105
        ctx.execute(BUMP, key)
    except BaseException:
        pass
    try:  # noqa: SIM105
        ctx.execute(HIT, key)
    except BaseException:
        pass
    return True


@app.function
def move(ctx: apiary.TxContext, src: int, dst: int, amount: int) -> int:
    """Debit, credit and log a transfer, each statement in its own try/except."""
    try:  # noqa: SIM105
        ctx.execute(DEBIT, amount, src)
    except Exception:
        pass
    try:  # noqa: SIM105
        ctx.execute(CREDIT, amount, dst)
    except Exception:
        pass
    try:  # noqa: SIM105
        ctx.execute(MOVED, src, dst, amount)
    except BaseException:
        pass
    return amount


@app.function
def totals(ctx: apiary.TxContext, key: str) -> dict[str, Any]:
    """The counter, its hits, the accounts' total and the transfers logged (read-only)."""
    counter = ctx.query_one(COUNTER, key)
    hits = ctx.query_one(HITS, key)
    money = ctx.query_one(MONEY)
    moves = ctx.query_one(MOVES)
    attempts = ctx.query_one(ATTEMPTS)
    assert hits is not None
    assert money is not None
    assert moves is not None
    assert attempts is not None
    return {
        "counter": None if counter is None else int(counter[0]),
        "hits": int(hits[0]),
        "accounts": int(money[0]),
        "money": int(money[1] or 0),
        "moves": int(moves[0]),
        "moved": int(moves[1]),
        "attempts": int(attempts[0]),
    }
