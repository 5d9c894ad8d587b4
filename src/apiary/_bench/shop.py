"""Online shop (Google's ``online-boutique``, as in the Apiary paper).

Operations (``MIX``: 90% browse, 8% add to cart, 1% checkout, 1% item update):

* ``browse(item_id)``: read-only; the product page (name, description, price, stock).
* ``add_to_cart(cart_id, item_id, quantity)``: one transaction: read the item's price
  and stock; if enough is left, put it in the cart (an upsert) and take it from the stock.
  Returns the quantity added (0 when out of stock).
* ``checkout(cart_id, order_id)``: ``read_cart`` and ``place_order`` as one transaction
  (insert the order's lines and its payment, empty the cart), then the ``ship`` step
  (a stand-in for the shipping and e-mail services). Returns the amount paid (0 for an
  empty cart).
* ``update_item(item_id, price)``: the catalog changes an item's price.

Data (``SCALES``): ``items`` items with ``stock`` units each and ``carts`` carts (empty at
first). Default: 100,000 items, 1,000 units each, 10,000 carts; ``tiny``: 1,000 items,
5 units each (so items sell out), 50 carts. Every operation picks its item and cart
uniformly at random; quantities are 1 to 3.

Invariants checked after a run: no stock below 0; the units taken from stock equal the
units in carts plus the units ordered, and the quantities ``add_to_cart`` answered; each
payment equals its order's lines; the payments add up to what ``checkout`` answered.

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

NAME = "shop"

SCALES: dict[str, dict[str, int]] = {
    "tiny": {"items": 1_000, "stock": 5, "carts": 50},
    "default": {"items": 100_000, "stock": 1_000, "carts": 10_000},
}

MIX: dict[str, float] = {"browse": 0.90, "add_to_cart": 0.08, "checkout": 0.01, "update_item": 0.01}

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    item_id     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    description TEXT NOT NULL,
    price       INTEGER NOT NULL,
    stock       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cart_lines (
    cart_id  INTEGER NOT NULL,
    item_id  INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    price    INTEGER NOT NULL,
    PRIMARY KEY (cart_id, item_id)
);
CREATE TABLE IF NOT EXISTS order_lines (
    order_id TEXT NOT NULL,
    item_id  INTEGER NOT NULL,
    quantity INTEGER NOT NULL,
    price    INTEGER NOT NULL,
    PRIMARY KEY (order_id, item_id)
);
CREATE TABLE IF NOT EXISTS payments (
    order_id TEXT PRIMARY KEY,
    cart_id  INTEGER NOT NULL,
    amount   INTEGER NOT NULL
);
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

ITEM_SQL = "SELECT name, description, price, stock FROM items WHERE item_id = ?"
PRICE_STOCK_SQL = "SELECT price, stock FROM items WHERE item_id = ?"
ADD_LINE_SQL = (
    "INSERT INTO cart_lines (cart_id, item_id, quantity, price) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (cart_id, item_id) DO UPDATE SET quantity = cart_lines.quantity + "
    "excluded.quantity, price = excluded.price"
)
TAKE_STOCK_SQL = "UPDATE items SET stock = stock - ? WHERE item_id = ? AND stock >= ?"
CART_SQL = "SELECT item_id, quantity, price FROM cart_lines WHERE cart_id = ? ORDER BY item_id"
ORDER_LINE_SQL = "INSERT INTO order_lines (order_id, item_id, quantity, price) VALUES (?, ?, ?, ?)"
PAYMENT_SQL = "INSERT INTO payments (order_id, cart_id, amount) VALUES (?, ?, ?)"
EMPTY_CART_SQL = "DELETE FROM cart_lines WHERE cart_id = ?"
SET_PRICE_SQL = "UPDATE items SET price = ? WHERE item_id = ?"
LOG_SQL = (
    "INSERT INTO app_log (invocation_id, function, op, tbl, row_keys, logged_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

ITEM = apiary.sql(ITEM_SQL)
PRICE_STOCK = apiary.sql(PRICE_STOCK_SQL)
ADD_LINE = apiary.sql(ADD_LINE_SQL)
TAKE_STOCK = apiary.sql(TAKE_STOCK_SQL)
CART = apiary.sql(CART_SQL)
ORDER_LINE = apiary.sql(ORDER_LINE_SQL)
PAYMENT = apiary.sql(PAYMENT_SQL)
EMPTY_CART = apiary.sql(EMPTY_CART_SQL)
SET_PRICE = apiary.sql(SET_PRICE_SQL)
LOG = apiary.sql(LOG_SQL)


class OutOfStockError(Exception):
    """The stock changed between reading and taking it (never under serializability)."""


def _log(ctx: apiary.TxContext, log: Any, function: str, op: str, table: str, keys: Any) -> None:
    """Manual logging: one ``app_log`` row per statement (only in ``logged_app``)."""
    if log is not None:
        ctx.execute(log, ctx.invocation_id, function, op, table, json.dumps(keys), time.time())


def _build(name: str, *, logged: bool) -> apiary.App:
    """The shop app; with ``logged``, every function also logs what it read and wrote."""
    app = apiary.App(name)
    app.schema(SCHEMA + (LOG_SCHEMA if logged else ""))
    log = LOG if logged else None

    @app.function
    def get_item(ctx: apiary.TxContext, item_id: int) -> list[Any] | None:
        """The product page: name, description, price, stock."""
        row = ctx.query_one(ITEM, item_id)
        _log(ctx, log, "get_item", "read", "items", [item_id])
        return None if row is None else list(row)

    @app.function
    def add_item(ctx: apiary.TxContext, cart_id: int, item_id: int, quantity: int) -> int:
        """Put ``quantity`` of the item in the cart if the stock has it; the quantity added."""
        row = ctx.query_one(PRICE_STOCK, item_id)
        _log(ctx, log, "add_item", "read", "items", [item_id])
        if row is None or row[1] < quantity:
            return 0
        ctx.execute(ADD_LINE, cart_id, item_id, quantity, row[0])
        if ctx.execute(TAKE_STOCK, quantity, item_id, quantity) != 1:
            raise OutOfStockError(f"item {item_id}: stock changed within the transaction")
        _log(ctx, log, "add_item", "insert", "cart_lines", [cart_id, item_id])
        _log(ctx, log, "add_item", "update", "items", [item_id])
        return quantity

    @app.function
    def read_cart(ctx: apiary.TxContext, cart_id: int) -> list[list[int]]:
        """The cart's lines: ``[item_id, quantity, price]``."""
        lines = [[int(v) for v in row] for row in ctx.query(CART, cart_id)]
        _log(ctx, log, "read_cart", "read", "cart_lines", [[cart_id, line[0]] for line in lines])
        return lines

    @app.function
    def place_order(
        ctx: apiary.TxContext, cart_id: int, order_id: str, lines: list[list[int]]
    ) -> int:
        """Turn the cart into an order with its payment; the amount paid (0: empty cart)."""
        if not lines:
            return 0
        amount = 0
        for item_id, quantity, price in lines:
            ctx.execute(ORDER_LINE, order_id, item_id, quantity, price)
            amount += quantity * price
        ctx.execute(PAYMENT, order_id, cart_id, amount)
        ctx.execute(EMPTY_CART, cart_id)
        _log(ctx, log, "place_order", "insert", "order_lines", [order_id])
        _log(ctx, log, "place_order", "insert", "payments", [order_id])
        _log(ctx, log, "place_order", "delete", "cart_lines", [cart_id])
        return amount

    @app.step
    def ship(ctx: apiary.StepContext, order_id: str, amount: int) -> str:
        """Stand-in for the shipping and e-mail services (idempotent by its key)."""
        return f"order {order_id} ({amount}) shipped, key {ctx.idempotency_key}"

    @app.function
    def set_price(ctx: apiary.TxContext, item_id: int, price: int) -> bool:
        """Change an item's price."""
        changed = ctx.execute(SET_PRICE, price, item_id) == 1
        _log(ctx, log, "set_price", "update", "items", [item_id])
        return changed

    @app.workflow
    def browse(item_id: int):  # type: ignore[no-untyped-def]
        """The product page of an item (read-only)."""
        return get_item(item_id)

    @app.workflow
    def add_to_cart(cart_id: int, item_id: int, quantity: int):  # type: ignore[no-untyped-def]
        """Add to the cart and take from the stock, in one transaction."""
        return add_item(cart_id, item_id, quantity)

    @app.workflow
    def checkout(cart_id: int, order_id: str):  # type: ignore[no-untyped-def]
        """Order what is in the cart and pay, in one transaction; then ship."""
        with apiary.transaction():
            lines = read_cart(cart_id)
            amount = place_order(cart_id, order_id, lines)
        ship(order_id, amount)
        return amount

    @app.workflow
    def update_item(item_id: int, price: int):  # type: ignore[no-untyped-def]
        """Change an item's price."""
        return set_price(item_id, price)

    return app


app = _build("bench_shop", logged=False)
logged_app = _build("bench_shop_logged", logged=True)


def data(p: Mapping[str, int]) -> Iterator[tuple[str, Sequence[str], Iterator[tuple[Any, ...]]]]:
    """The initial rows: ``(table, columns, rows)`` per table."""
    rng = random.Random(13)
    yield (
        "items",
        ("item_id", "name", "description", "price", "stock"),
        (
            (i, f"item {i}", f"a fine item, number {i}", rng.randint(100, 10_000), p["stock"])
            for i in range(1, p["items"] + 1)
        ),
    )


def operation(
    op: str, rng: random.Random, p: Mapping[str, int], uid: str
) -> tuple[str, dict[str, Any]]:
    """The workflow and arguments of one ``op``; ``uid`` is unique to this operation."""
    item_id = rng.randint(1, p["items"])
    if op == "browse":
        return "browse", {"item_id": item_id}
    cart_id = rng.randint(1, p["carts"])
    if op == "add_to_cart":
        return "add_to_cart", {
            "cart_id": cart_id,
            "item_id": item_id,
            "quantity": rng.randint(1, 3),
        }
    if op == "checkout":
        return "checkout", {"cart_id": cart_id, "order_id": f"o{uid}"}
    return "update_item", {"item_id": item_id, "price": rng.randint(100, 10_000)}


def check(
    query: Callable[[str], list[tuple[Any, ...]]], p: Mapping[str, int], done: Mapping[str, int]
) -> str:
    """Check the invariants after a run (see the module docstring); return a summary."""
    lowest = query("SELECT min(stock) FROM items")[0][0]
    if lowest is None or lowest < 0:
        raise AssertionError(f"shop: an item has stock {lowest}")
    taken = p["items"] * p["stock"] - query("SELECT sum(stock) FROM items")[0][0]
    in_carts = query("SELECT coalesce(sum(quantity), 0) FROM cart_lines")[0][0]
    ordered = query("SELECT coalesce(sum(quantity), 0) FROM order_lines")[0][0]
    added = done.get("add_to_cart+", 0)
    if not taken == in_carts + ordered == added:
        raise AssertionError(
            f"shop: {taken} units left the stock, {in_carts} are in carts, {ordered} ordered, "
            f"add_to_cart answered {added}"
        )
    unpaid = query(
        "SELECT count(*) FROM payments y WHERE y.amount <> (SELECT sum(l.quantity * l.price) "
        "FROM order_lines l WHERE l.order_id = y.order_id)"
    )[0][0]
    paid = query("SELECT coalesce(sum(amount), 0) FROM payments")[0][0]
    if unpaid or paid != done.get("checkout+", 0):
        raise AssertionError(
            f"shop: {unpaid} payments differ from their orders; {paid} paid, checkout "
            f"answered {done.get('checkout+', 0)}"
        )
    return (
        f"{taken:,} units taken = {in_carts:,} in carts + {ordered:,} ordered = added; "
        f"payments match orders ({paid:,} paid); no stock below 0"
    )
