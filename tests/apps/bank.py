"""Accounts and transfers: a debit and a credit in one multi-function transaction.

Balances carry no CHECK constraint on purpose: a lost update or an overdraft that slipped
through would show as a negative balance or as money created or destroyed.
"""

from __future__ import annotations

from typing import Any

import apiary

app = apiary.App("bank")
app.schema("""
CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (transfer_id TEXT NOT NULL, src INTEGER NOT NULL,
                                   dst INTEGER NOT NULL, amount INTEGER NOT NULL);
""")

OPEN = apiary.sql("INSERT INTO accounts (id, balance) VALUES (?, ?)")
BALANCE = apiary.sql("SELECT balance FROM accounts WHERE id = ?")
DEBIT = apiary.sql("UPDATE accounts SET balance = balance - ? WHERE id = ?")
CREDIT = apiary.sql("UPDATE accounts SET balance = balance + ? WHERE id = ?")
RECORD = apiary.sql("INSERT INTO ledger (transfer_id, src, dst, amount) VALUES (?, ?, ?, ?)")
BALANCES = apiary.sql("SELECT id, balance FROM accounts ORDER BY id")
LEDGER = apiary.sql("SELECT transfer_id, src, dst, amount FROM ledger ORDER BY transfer_id")


class InsufficientFundsError(Exception):
    """Application error: the source account cannot cover the transfer."""


class UnknownAccountError(Exception):
    """Application error: no such account."""


def _balance(ctx: apiary.TxContext, account: int) -> int:
    row = ctx.query_one(BALANCE, account)
    if row is None:
        raise UnknownAccountError(f"no account {account}")
    return int(row[0])


@app.function
def open_account(ctx: apiary.TxContext, account: int, balance: int) -> int:
    """Create an account with an opening balance."""
    ctx.execute(OPEN, account, balance)
    return balance


@app.function
def debit(ctx: apiary.TxContext, src: int, amount: int) -> int:
    """Take ``amount`` from ``src``, refusing an overdraft; return what is left."""
    if amount <= 0:
        raise ValueError(f"amount must be positive, not {amount}")
    balance = _balance(ctx, src)
    if balance < amount:
        raise InsufficientFundsError(f"account {src} holds {balance}, cannot pay {amount}")
    ctx.execute(DEBIT, amount, src)
    return balance - amount


@app.function
def credit(
    ctx: apiary.TxContext, transfer_id: str, src: int, dst: int, amount: int, remaining: int
) -> dict[str, Any]:
    """Give ``amount`` to ``dst`` and write the ledger row."""
    before = _balance(ctx, dst)
    ctx.execute(CREDIT, amount, dst)
    ctx.execute(RECORD, transfer_id, src, dst, amount)
    return {"transfer": transfer_id, "src_left": remaining, "dst_now": before + amount}


@app.workflow
def transfer(transfer_id: str, src: int, dst: int, amount: int):  # type: ignore[no-untyped-def]
    """Move money between two accounts in one ACID transaction."""
    with apiary.transaction():
        remaining = debit(src, amount)
        receipt = credit(transfer_id, src, dst, amount, remaining)
    return receipt


@app.function
def balances(ctx: apiary.TxContext) -> dict[str, int]:
    """Every account's balance, by account ID as a string (read-only)."""
    return {str(account): int(balance) for account, balance in ctx.query(BALANCES)}


@app.function
def ledger(ctx: apiary.TxContext) -> list[list[Any]]:
    """Every ledger row (read-only)."""
    return [list(row) for row in ctx.query(LEDGER)]
