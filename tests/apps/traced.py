"""The tracing test app: one function per kind of access the tracer must capture.

Tables cover the key shapes: ``customers`` (integer key), ``orders`` and ``archive``
(composite keys), ``tags`` (text key). The functions do point and range reads, a join,
an aggregate, single-row and multi-row inserts (``INSERT ... SELECT``), updates, deletes,
an upsert, a lookup that finds nothing (it is just ``get_customer`` of a missing id), a
two-function transaction group, and writes followed by an exception (rolled back, so
they must leave no trace).
"""

from __future__ import annotations

from typing import Any

import apiary

app = apiary.App("traced")
app.schema("""
CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                      city TEXT NOT NULL, balance INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS orders (customer_id INTEGER NOT NULL, order_no INTEGER NOT NULL,
                                   amount INTEGER NOT NULL, status TEXT NOT NULL,
                                   PRIMARY KEY (customer_id, order_no));
CREATE TABLE IF NOT EXISTS archive (customer_id INTEGER NOT NULL, order_no INTEGER NOT NULL,
                                    amount INTEGER NOT NULL,
                                    PRIMARY KEY (customer_id, order_no));
CREATE TABLE IF NOT EXISTS tags (tag TEXT PRIMARY KEY, uses INTEGER NOT NULL);
""")

ADD_CUSTOMER = apiary.sql("INSERT INTO customers (id, name, city, balance) VALUES (?, ?, ?, ?)")
GET_CUSTOMER = apiary.sql("SELECT name, balance FROM customers WHERE id = ?")
RICHEST = apiary.sql(
    "SELECT id, name FROM customers WHERE balance >= ? ORDER BY balance DESC, id LIMIT ?"
)
CUSTOMER_ORDERS = apiary.sql(
    "SELECT c.name, o.order_no, o.amount FROM customers c "
    "JOIN orders o ON o.customer_id = c.id WHERE c.id = ? ORDER BY o.order_no"
)
ORDER_TOTAL = apiary.sql(
    "SELECT count(*), coalesce(sum(amount), 0) FROM orders WHERE customer_id = ?"
)
PLACE_ORDER = apiary.sql(
    "INSERT INTO orders (customer_id, order_no, amount, status) VALUES (?, ?, ?, 'new')"
)
SHIP = apiary.sql(
    "UPDATE orders SET status = 'shipped' WHERE customer_id = ? AND order_no = ? AND status = 'new'"
)
ARCHIVE = apiary.sql(
    "INSERT INTO archive (customer_id, order_no, amount) "
    "SELECT customer_id, order_no, amount FROM orders WHERE status = ?"
)
PURGE = apiary.sql("DELETE FROM orders WHERE status = ?")
RAISE_CITY = apiary.sql("UPDATE customers SET balance = balance + ? WHERE city = ?")
TAG = apiary.sql(
    "INSERT INTO tags (tag, uses) VALUES (?, 1) "
    "ON CONFLICT (tag) DO UPDATE SET uses = tags.uses + 1"
)
BALANCE = apiary.sql("SELECT balance FROM customers WHERE id = ?")
ADJUST = apiary.sql("UPDATE customers SET balance = balance + ? WHERE id = ?")


class NotEnoughError(Exception):
    """Application error: a balance cannot cover a debit."""


@app.function
def add_customer(ctx: apiary.TxContext, id: int, name: str, city: str, balance: int) -> int:
    """Insert one customer."""
    ctx.execute(ADD_CUSTOMER, id, name, city, balance)
    return id


@app.function
def get_customer(ctx: apiary.TxContext, id: int) -> list[Any] | None:
    """A point read; ``None`` for a missing customer (a lookup that finds nothing)."""
    row = ctx.query_one(GET_CUSTOMER, id)
    return None if row is None else list(row)


@app.function
def richest(ctx: apiary.TxContext, min_balance: int, limit: int) -> list[int]:
    """A range read with ORDER BY and LIMIT: the ids of the richest customers."""
    return [int(row[0]) for row in ctx.query(RICHEST, min_balance, limit)]


@app.function
def customer_orders(ctx: apiary.TxContext, customer_id: int) -> list[int]:
    """A join of a customer with its orders: the order numbers."""
    return [int(row[1]) for row in ctx.query(CUSTOMER_ORDERS, customer_id)]


@app.function
def order_total(ctx: apiary.TxContext, customer_id: int) -> list[int]:
    """An aggregate (traced per statement): ``[count, sum]`` of a customer's orders."""
    row = ctx.query_one(ORDER_TOTAL, customer_id)
    assert row is not None
    return [int(row[0]), int(row[1])]


@app.function
def place_order(ctx: apiary.TxContext, customer_id: int, order_no: int, amount: int) -> int:
    """Insert one order; returns the customer's id."""
    ctx.execute(PLACE_ORDER, customer_id, order_no, amount)
    return customer_id


@app.function
def ship(ctx: apiary.TxContext, customer_id: int, order_no: int) -> int:
    """Mark a new order shipped; returns how many rows changed (0 or 1)."""
    return int(ctx.execute(SHIP, customer_id, order_no))


@app.function
def archive_and_purge(ctx: apiary.TxContext, status: str) -> int:
    """Copy the orders of ``status`` to the archive (INSERT ... SELECT), then delete them."""
    copied = int(ctx.execute(ARCHIVE, status))
    ctx.execute(PURGE, status)
    return copied


@app.function
def raise_city(ctx: apiary.TxContext, city: str, amount: int) -> int:
    """A multi-row update: add ``amount`` to every balance in ``city``."""
    return int(ctx.execute(RAISE_CITY, amount, city))


@app.function
def tag(ctx: apiary.TxContext, name: str) -> str:
    """An upsert: count a use of a tag."""
    ctx.execute(TAG, name)
    return name


@app.function
def debit(ctx: apiary.TxContext, src: int, amount: int) -> int:
    """Read a balance, then take ``amount`` from it; returns what is left."""
    row = ctx.query_one(BALANCE, src)
    assert row is not None
    if int(row[0]) < amount:
        raise NotEnoughError(f"customer {src} has {row[0]}, cannot pay {amount}")
    ctx.execute(ADJUST, -amount, src)
    return int(row[0]) - amount


@app.function
def credit(ctx: apiary.TxContext, dst: int, amount: int, left: int) -> int:
    """Give ``amount`` to ``dst``."""
    ctx.execute(ADJUST, amount, dst)
    return left


@app.function
def tag_then_fail(ctx: apiary.TxContext, name: str, id: int) -> None:
    """Write, read, then raise: the transaction rolls back and nothing may be traced."""
    ctx.execute(TAG, name)
    ctx.execute(ADJUST, 1000, id)
    ctx.query_one(BALANCE, id)
    raise RuntimeError("changed my mind")


@app.function
def credit_then_fail(ctx: apiary.TxContext, dst: int, amount: int, left: int) -> int:
    """Credit, then raise: rolls back its whole transaction group."""
    ctx.execute(ADJUST, amount, dst)
    raise NotEnoughError(f"refusing to credit {amount} (left: {left})")


@app.workflow
def onboard(  # type: ignore[no-untyped-def]
    id: int, name: str, city: str, balance: int, order_no: int, amount: int
):
    """Add a customer with a first order, then report its order total (in that order)."""
    added = add_customer(id, name, city, balance)
    placed = place_order(added, order_no, amount)
    return order_total(placed)


@app.workflow
def transfer(src: int, dst: int, amount: int):  # type: ignore[no-untyped-def]
    """Debit and credit in one transaction (a two-function group)."""
    with apiary.transaction():
        left = debit(src, amount)
        done = credit(dst, amount, left)
    return done


@app.workflow
def tag_twice_then_fail(name: str, id: int):  # type: ignore[no-untyped-def]
    """A committed upsert, then a unit that writes and raises (rolled back)."""
    tagged = tag(name)
    return tag_then_fail(tagged, id)


@app.workflow
def transfer_then_fail(src: int, dst: int, amount: int):  # type: ignore[no-untyped-def]
    """A group whose second member raises after both wrote: the whole group rolls back."""
    with apiary.transaction():
        left = debit(src, amount)
        failed = credit_then_fail(dst, amount, left)
    return failed


@app.workflow
def review(customer_id: int, min_balance: int, limit: int):  # type: ignore[no-untyped-def]
    """Read-only: a point read, a range read, a join and an aggregate (independent branches)."""
    found = get_customer(customer_id)
    top = richest(min_balance, limit)
    mine = customer_orders(customer_id)
    total = order_total(customer_id)
    return [found, top, mine, total]
