"""The chaos bank: transfers between accounts, an audit step, a ledger keyed by transfer.

A transfer is one multi-function transaction (debit, then credit and ledger row), then an
audit step. Balances carry no CHECK constraint on purpose: a lost update, an overdraft that
slipped through or a transfer applied twice shows as a negative balance, as money created
or destroyed, or as a ledger that does not explain the balances.

``withdraw_joint`` is the write-skew probe: it reads two accounts and debits one if their
sum covers the amount. Under snapshot isolation two concurrent withdrawals from either
side of a pair both pass the check and the pair goes negative; under SERIALIZABLE one of
them is retried and sees the other.

The audit step runs in the frontend (steps are not transactional). When
``APIARY_CHAOS_AUDIT`` names a folder, each execution leaves a file there, so that the
harness can see that every transfer was audited and count re-executions after crashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from typing import Any

import apiary

app = apiary.App("chaos_bank")
app.schema("""
CREATE TABLE IF NOT EXISTS accounts (id INTEGER PRIMARY KEY, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS ledger (transfer_id TEXT PRIMARY KEY, src INTEGER NOT NULL,
                                   dst INTEGER NOT NULL, amount INTEGER NOT NULL);
""")

OPEN = apiary.sql("INSERT INTO accounts (id, balance) VALUES (?, ?)")
BALANCE = apiary.sql("SELECT balance FROM accounts WHERE id = ?")
DEBIT = apiary.sql("UPDATE accounts SET balance = balance - ? WHERE id = ?")
CREDIT = apiary.sql("UPDATE accounts SET balance = balance + ? WHERE id = ?")
RECORD = apiary.sql("INSERT INTO ledger (transfer_id, src, dst, amount) VALUES (?, ?, ?, ?)")
BALANCES = apiary.sql("SELECT id, balance FROM accounts ORDER BY id")
TOTAL = apiary.sql("SELECT COUNT(*), COALESCE(SUM(balance), 0) FROM accounts")
LEDGER = apiary.sql("SELECT transfer_id, src, dst, amount FROM ledger ORDER BY transfer_id")

#: Environment variable naming the folder where audit executions leave their files.
AUDIT_ENV = "APIARY_CHAOS_AUDIT"


class InsufficientFundsError(Exception):
    """Application error: the source cannot cover the amount."""


class UnknownAccountError(Exception):
    """Application error: no such account."""


def _balance(ctx: apiary.TxContext, account: int) -> int:
    row = ctx.query_one(BALANCE, account)
    if row is None:
        raise UnknownAccountError(f"no account {account}")
    return int(row[0])


@app.function
def open_accounts(ctx: apiary.TxContext, count: int, balance: int) -> int:
    """Create accounts ``0 .. count-1``, each with ``balance``; return the total."""
    for account in range(count):
        ctx.execute(OPEN, account, balance)
    return count * balance


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
    """Give ``amount`` to ``dst`` and write the ledger row keyed by ``transfer_id``."""
    before = _balance(ctx, dst)
    ctx.execute(CREDIT, amount, dst)
    ctx.execute(RECORD, transfer_id, src, dst, amount)
    return {"transfer": transfer_id, "src_left": remaining, "dst_now": before + amount}


@app.step
def audit(ctx: apiary.StepContext, receipt: dict[str, Any]) -> str:
    """Report the transfer to an (idempotent) audit service: a file per execution."""
    key = str(ctx.idempotency_key)
    folder = os.environ.get(AUDIT_ENV)
    if folder:
        name = f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.{uuid.uuid4().hex[:8]}"
        # Written aside and renamed: a frontend killed mid-write leaves a hidden partial
        # file, not a torn record.
        partial = os.path.join(folder, f".{name}")
        with open(partial, "x", encoding="utf-8") as out:
            json.dump({"key": key, "transfer": receipt["transfer"]}, out)
        os.rename(partial, os.path.join(folder, name))
    return f"audited {receipt['transfer']} under {key}"


@app.workflow
def transfer(transfer_id: str, src: int, dst: int, amount: int):  # type: ignore[no-untyped-def]
    """Move money in one ACID transaction, then audit it."""
    # A workflow body calls functions without their context (the registrar traces it
    # into a DAG), which the decorators' static types cannot express.
    with apiary.transaction():
        remaining = debit(src, amount)  # type: ignore[call-arg]
        receipt = credit(transfer_id, src, dst, amount, remaining)  # type: ignore[call-arg]
    audit(receipt)  # type: ignore[call-arg, arg-type]
    return receipt


@app.function
def withdraw_joint(ctx: apiary.TxContext, account: int, partner: int, amount: int) -> int:
    """Take ``amount`` from ``account`` if it and ``partner`` hold that much together."""
    together = _balance(ctx, account) + _balance(ctx, partner)
    if together < amount:
        raise InsufficientFundsError(f"accounts {account}+{partner} hold {together}")
    ctx.execute(DEBIT, amount, account)
    return together - amount


@app.workflow
def joint_withdrawal(account: int, partner: int, amount: int):  # type: ignore[no-untyped-def]
    """A withdrawal guarded by a pair's sum (the write-skew probe)."""
    return withdraw_joint(account, partner, amount)  # type: ignore[call-arg]


@app.function
def deposit(ctx: apiary.TxContext, account: int, amount: int) -> int:
    """Add ``amount`` to ``account``; return the new balance."""
    ctx.execute(CREDIT, amount, account)
    return _balance(ctx, account)


@app.function
def balances(ctx: apiary.TxContext) -> dict[str, int]:
    """Every account's balance, by account ID as a string (read-only)."""
    return {str(account): int(balance) for account, balance in ctx.query(BALANCES)}


@app.function
def total(ctx: apiary.TxContext) -> list[int]:
    """``[accounts, sum of balances]`` (read-only)."""
    row = ctx.query_one(TOTAL)
    assert row is not None
    return [int(row[0]), int(row[1])]


@app.function
def ledger(ctx: apiary.TxContext) -> list[list[Any]]:
    """Every ledger row, ``[transfer_id, src, dst, amount]`` (read-only)."""
    return [list(row) for row in ctx.query(LEDGER)]
