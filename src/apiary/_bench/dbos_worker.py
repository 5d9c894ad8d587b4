"""The workloads in DBOS Transact: a worker process that ``apiary bench`` drives over pipes.

Run by :mod:`apiary._bench.dbos_peer` with the Python of a virtualenv that has ``dbos``
(it is not a dependency of apiary, and this file imports nothing of apiary)::

    python3 -m venv /tmp/dbos-venv && /tmp/dbos-venv/bin/pip install dbos
    APIARY_BENCH_DBOS_PYTHON=/tmp/dbos-venv/bin/python apiary bench --systems dbos ...

The first line on stdin is the setup (workload, the workload module's SQL texts and
constants, the application and system database URLs, the thread count); the worker
answers ``{"ready": true}``. Then each line is one operation ``{"id", "workflow",
"args"}``, run on a thread pool; each answer is ``{"id", "output"}`` or ``{"id",
"error"}``. An empty line or end of input stops it.

Every operation is a ``@DBOS.workflow``; its transactions are ``@ds.transaction()`` on a
``SQLAlchemyDatasource`` over the same PostgreSQL database as the other systems
(serializable, DBOS's default, each committing DBOS's checkpoint with the writes), its
steps ``@DBOS.step()``; the statements are the workload module's SQL texts, run with
``exec_driver_sql``.
"""

# DBOS's decorators come from a module imported at run time (typed Any here).
# mypy: disable-error-code="untyped-decorator, no-any-return"

from __future__ import annotations

import concurrent.futures
import importlib
import json
import sys
import threading
from collections.abc import Callable
from typing import Any


def build(workload: str, sql: Callable[..., Any], consts: dict[str, Any]) -> dict[str, Any]:
    """The workload's operations as DBOS workflows (registered before launch)."""
    DBOS, ds = consts["DBOS"], consts["ds"]
    if workload == "hotel":
        radius = consts["RADIUS"]

        @ds.transaction()
        def find_offers(lat: float, lon: float, day: int) -> list[list[Any]]:
            found = sql("NEARBY_SQL", (lat - radius, lat + radius, lon - radius, lon + radius))
            offers = []
            for (hotel_id,) in found.fetchall():
                rate = sql("RATE_SQL", (hotel_id,)).fetchone()
                room = sql("AVAILABLE_SQL", (hotel_id, day)).fetchone()
                if rate is not None and room is not None and room[0] > 0:
                    offers.append([hotel_id, rate[0], rate[1], room[0]])
            return offers

        @ds.transaction()
        def check_and_reserve(hotel_id: int, day: int, customer: str) -> bool:
            room = sql("AVAILABLE_SQL", (hotel_id, day)).fetchone()
            if room is None or room[0] <= 0:
                return False
            if sql("TAKE_ROOM_SQL", (hotel_id, day)).rowcount != 1:
                return False
            sql("ADD_RESERVATION_SQL", (hotel_id, day, customer))
            return True

        @DBOS.step()
        def confirm(customer: str, booked: bool) -> str:
            return f"to {customer}: booked={booked}"

        @DBOS.workflow()
        def search(lat: float, lon: float, day: int) -> list[list[Any]]:
            return find_offers(lat, lon, day)

        @DBOS.workflow()
        def reserve(hotel_id: int, day: int, customer: str) -> bool:
            booked = check_and_reserve(hotel_id, day, customer)
            confirm(customer, booked)
            return booked

        return {"search": search, "reserve": reserve}
    if workload == "shop":

        @ds.transaction()
        def get_item(item_id: int) -> list[Any] | None:
            row = sql("ITEM_SQL", (item_id,)).fetchone()
            return None if row is None else list(row)

        @ds.transaction()
        def add_item(cart_id: int, item_id: int, quantity: int) -> int:
            row = sql("PRICE_STOCK_SQL", (item_id,)).fetchone()
            if row is None or row[1] < quantity:
                return 0
            sql("ADD_LINE_SQL", (cart_id, item_id, quantity, row[0]))
            if sql("TAKE_STOCK_SQL", (quantity, item_id, quantity)).rowcount != 1:
                raise RuntimeError(f"item {item_id}: stock changed within the transaction")
            return quantity

        @ds.transaction()
        def place_order(cart_id: int, order_id: str) -> int:
            lines = sql("CART_SQL", (cart_id,)).fetchall()
            if not lines:
                return 0
            amount = 0
            for item_id, quantity, price in lines:
                sql("ORDER_LINE_SQL", (order_id, item_id, quantity, price))
                amount += quantity * price
            sql("PAYMENT_SQL", (order_id, cart_id, amount))
            sql("EMPTY_CART_SQL", (cart_id,))
            return amount

        @ds.transaction()
        def set_price(item_id: int, price: int) -> bool:
            return bool(sql("SET_PRICE_SQL", (price, item_id)).rowcount == 1)

        @DBOS.step()
        def ship(order_id: str, amount: int) -> str:
            return f"order {order_id} ({amount}) shipped"

        @DBOS.workflow()
        def browse(item_id: int) -> list[Any] | None:
            return get_item(item_id)

        @DBOS.workflow()
        def add_to_cart(cart_id: int, item_id: int, quantity: int) -> int:
            return add_item(cart_id, item_id, quantity)

        @DBOS.workflow()
        def checkout(cart_id: int, order_id: str) -> int:
            amount = place_order(cart_id, order_id)
            ship(order_id, amount)
            return amount

        @DBOS.workflow()
        def update_item(item_id: int, price: int) -> bool:
            return set_price(item_id, price)

        return {
            "browse": browse,
            "add_to_cart": add_to_cart,
            "checkout": checkout,
            "update_item": update_item,
        }
    if workload == "retwis":

        @ds.transaction()
        def get_timeline(user_id: int) -> list[list[Any]]:
            return [list(row) for row in sql("TIMELINE_SQL", (user_id,)).fetchall()]

        @ds.transaction()
        def add_post(user_id: int, post_id: str, ts: int, body: str) -> bool:
            sql("POST_SQL", (post_id, user_id, ts, body))
            return True

        @ds.transaction()
        def add_follow(follower: int, followee: int) -> bool:
            return bool(sql("FOLLOW_SQL", (follower, followee)).rowcount == 1)

        @DBOS.workflow()
        def timeline(user_id: int) -> list[list[Any]]:
            return get_timeline(user_id)

        @DBOS.workflow()
        def post(user_id: int, post_id: str, ts: int, body: str) -> bool:
            return add_post(user_id, post_id, ts, body)

        @DBOS.workflow()
        def follow(follower: int, followee: int) -> bool:
            return add_follow(follower, followee)

        return {"timeline": timeline, "post": post, "follow": follow}

    @ds.transaction()
    def get_value(counter_id: int) -> int | None:
        row = sql("READ_SQL", (counter_id,)).fetchone()
        return None if row is None else int(row[0])

    @ds.transaction()
    def add_one(counter_id: int) -> int | None:
        row = sql("INCREMENT_SQL", (counter_id,)).fetchone()
        return None if row is None else int(row[0])

    @DBOS.workflow()
    def read(counter_id: int) -> int | None:
        return get_value(counter_id)

    @DBOS.workflow()
    def increment(counter_id: int) -> int | None:
        return add_one(counter_id)

    return {"read": read, "increment": increment}


def main() -> None:
    """Set DBOS up from the first line of stdin, then serve operations until stdin ends."""
    dbos: Any = importlib.import_module("dbos")  # not installed where apiary is checked
    DBOS = dbos.DBOS
    setup = json.loads(sys.stdin.readline())
    threads = int(setup["threads"])
    DBOS(
        config={
            "name": f"apiary-bench-{setup['workload']}",
            "system_database_url": setup["system_url"],
            "log_level": "WARNING",
        }
    )
    app_url = setup["app_url"].replace("postgresql://", "postgresql+psycopg://", 1)
    ds = dbos.SQLAlchemyDatasource.create(
        app_url, engine_kwargs={"pool_size": threads, "max_overflow": 4}
    )
    texts = {name: text.replace("?", "%s") for name, text in setup["sql"].items()}

    def sql(name: str, params: tuple[Any, ...]) -> Any:
        return ds.sql_session().connection().exec_driver_sql(texts[name], params)

    workflows = build(setup["workload"], sql, {**setup["consts"], "ds": ds, "DBOS": DBOS})
    DBOS.launch()
    out = sys.stdout
    lock = threading.Lock()

    def answer(reply: dict[str, Any]) -> None:
        line = json.dumps(reply) + "\n"
        with lock:
            out.write(line)
            out.flush()

    def handle(request: dict[str, Any]) -> None:
        try:
            output = workflows[request["workflow"]](**request["args"])
            answer({"id": request["id"], "output": output})
        except Exception as exc:
            answer({"id": request["id"], "error": f"{type(exc).__name__}: {exc}"})

    answer({"ready": True})
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        for line in sys.stdin:
            if not line.strip():
                break
            pool.submit(handle, json.loads(line))
    DBOS.destroy()


if __name__ == "__main__":
    main()
