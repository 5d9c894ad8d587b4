"""A partitioned bank: accounts and their ledger spread over a cluster by account.

A transfer between two accounts is a workflow of two units (a debit on the source's
partition, then a credit on the destination's), each exactly once; a multi-function
transaction (``audit``) stays on one partition. Fees are a replicated table. Totals are
read by functions that run on every partition and combine their results.
"""

from __future__ import annotations

from typing import Any

import apiary

app = apiary.App("pbank")
app.schema("""
CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, owner TEXT NOT NULL,
                                     balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (account INTEGER NOT NULL, transfer TEXT NOT NULL,
                                   amount INTEGER NOT NULL, PRIMARY KEY (account, transfer));
CREATE TABLE IF NOT EXISTS fees (kind TEXT PRIMARY KEY, amount INTEGER NOT NULL);
""")
app.partition("accounts", by="id")
app.partition("ledger", by="account")
app.replicate("fees")

OPEN = apiary.sql("INSERT INTO accounts (id, owner, balance) VALUES (?, ?, ?)")
BALANCE = apiary.sql("SELECT balance FROM accounts WHERE id = ?")
CHANGE = apiary.sql("UPDATE accounts SET balance = balance + ? WHERE id = ?")
BOOK = apiary.sql("INSERT INTO ledger (account, transfer, amount) VALUES (?, ?, ?)")
HISTORY = apiary.sql("SELECT transfer, amount FROM ledger WHERE account = ? ORDER BY transfer")
TOTAL = apiary.sql("SELECT COALESCE(SUM(balance), 0) FROM accounts")
ALL_IDS = apiary.sql("SELECT id FROM accounts ORDER BY id")
FEE = apiary.sql("SELECT amount FROM fees WHERE kind = ?")


class InsufficientFundsError(Exception):
    """Application error: the source account cannot cover the transfer."""


@app.function(partition="account")
def open_account(ctx: apiary.TxContext, account: int, owner: str, balance: int) -> int:
    """Create an account."""
    ctx.execute(OPEN, account, owner, balance)
    return balance


@app.function(partition="account")
def debit(ctx: apiary.TxContext, account: int, amount: int, transfer: str) -> int:
    """Take ``amount`` from an account (refusing an overdraft) and book it."""
    row = ctx.query_one(BALANCE, account)
    if row is None or row[0] < amount:
        raise InsufficientFundsError(f"account {account} cannot pay {amount}")
    ctx.execute(CHANGE, -amount, account)
    ctx.execute(BOOK, account, transfer, -amount)
    return int(row[0]) - amount


@app.function(partition="account")
def credit(ctx: apiary.TxContext, account: int, amount: int, transfer: str, left: int) -> int:
    """Give ``amount`` to an account and book it."""
    ctx.execute(CHANGE, amount, account)
    ctx.execute(BOOK, account, transfer, amount)
    return left


@app.function(partition="account")
def balance(ctx: apiary.TxContext, account: int) -> int | None:
    """An account's balance."""
    row = ctx.query_one(BALANCE, account)
    return None if row is None else int(row[0])


@app.function(partition="account")
def statement(ctx: apiary.TxContext, account: int, now: int | None) -> list[Any]:
    """An account's balance (read before) and its ledger."""
    return [now, [list(row) for row in ctx.query(HISTORY, account)]]


@app.function(combine="sum")
def total(ctx: apiary.TxContext) -> int:
    """All the money in the bank (every partition's, summed)."""
    return int(ctx.query_one(TOTAL)[0])  # type: ignore[index]


@app.function(combine="concat")
def account_ids(ctx: apiary.TxContext) -> list[int]:
    """Every account ID (every partition's, concatenated)."""
    return [row[0] for row in ctx.query(ALL_IDS)]


@app.function
def fee(ctx: apiary.TxContext, kind: str) -> int | None:
    """A fee from the replicated table."""
    row = ctx.query_one(FEE, kind)
    return None if row is None else int(row[0])


@app.step
def receipt(ctx: apiary.StepContext, transfer: str, left: int) -> str:
    """A receipt (an external call, recorded once)."""
    return f"{transfer}: {left} left ({ctx.idempotency_key})"


@app.workflow
def new_account(account: int, owner: str, balance: int) -> Any:
    """Open an account (a workflow, so that it can be called over HTTP)."""
    return open_account(account, owner, balance)


@app.workflow
def transfer(src: int, dst: int, amount: int, transfer: str) -> Any:
    """Move money between two accounts, usually on two partitions."""
    left = debit(src, amount, transfer)
    done = credit(dst, amount, transfer, left)
    return [done, receipt(transfer, done)]


@app.workflow
def audit(account: int) -> Any:
    """An account's balance and ledger, read in one transaction on its partition."""
    with apiary.transaction():
        now = balance(account)
        found = statement(account, now)
    return found


@app.workflow
def overview(kind: str) -> Any:
    """Every partition's total and account IDs, and a replicated fee."""
    return [total(), account_ids(), fee(kind)]
