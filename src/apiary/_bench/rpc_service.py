"""The RPC service baseline: a conventional HTTP service over PostgreSQL.

This is how the workloads are usually built without Apiary: a Starlette application
served by uvicorn (one process, like ``apiary serve``'s default), one ``POST /{operation}``
route per operation taking its arguments as a JSON object and answering
``{"output": ...}``. A handler runs *interactive* transactions over an asynchronous
psycopg connection pool: ``BEGIN``, one round trip per statement, ``COMMIT``, under
``SERIALIZABLE`` with serialization failures and deadlocks retried, exactly as Apiary's
functions run them. Workflows are orchestrated in the handler (the transaction, then the
step). It runs the workload modules' own SQL texts (``*_SQL``), and psycopg prepares each
statement on every connection after its fifth use (its default).

What it does not do, and Apiary does: exactly-once (a retried request runs again),
run-to-completion after a crash, and tracing. Run by ``apiary bench`` as::

    python -m apiary._bench.rpc_service --workload hotel --db URL --port 8123 --pool 4
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any

from apiary._bench import counter, hotel, retwis, shop

Handler = Callable[..., Awaitable[Any]]


def pg(sql: str) -> str:
    """A statement's text with psycopg's placeholders."""
    return sql.replace("%", "%%").replace("?", "%s")


class Service:
    """The operations of every workload, as handlers over one connection pool.

    ``sleep`` waits between the tries of a conflicting transaction: ``asyncio.sleep`` in
    the service, a blocking sleep where the handlers run without an event loop
    (:mod:`apiary._bench.direct`).
    """

    def __init__(
        self, pool: Any, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    ) -> None:
        import psycopg

        self.pool = pool
        self.sleep = sleep
        self.retryable = (psycopg.errors.SerializationFailure, psycopg.errors.DeadlockDetected)

    async def transact(self, work: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run ``work(conn)`` in one serializable transaction, retrying conflicts."""
        delay = 0.001
        while True:
            async with self.pool.connection() as conn:
                try:
                    async with conn.transaction():
                        return await work(conn)
                except self.retryable:
                    pass
            await self.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 0.1)

    # -- hotel --------------------------------------------------------------------------

    async def search(self, lat: float, lon: float, day: int) -> list[list[Any]]:
        """Hotels near a point with a room on ``day`` (one read-only transaction)."""
        r = hotel.RADIUS

        async def work(conn: Any) -> list[list[Any]]:
            cur = await conn.execute(pg(hotel.NEARBY_SQL), (lat - r, lat + r, lon - r, lon + r))
            offers: list[list[Any]] = []
            for (hotel_id,) in await cur.fetchall():
                rate = await (await conn.execute(pg(hotel.RATE_SQL), (hotel_id,))).fetchone()
                room = await (
                    await conn.execute(pg(hotel.AVAILABLE_SQL), (hotel_id, day))
                ).fetchone()
                if rate is not None and room is not None and room[0] > 0:
                    offers.append([hotel_id, rate[0], rate[1], room[0]])
            return offers

        result: list[list[Any]] = await self.transact(work)
        return result

    async def reserve(self, hotel_id: int, day: int, customer: str) -> bool:
        """Check and reserve in one transaction, then the confirmation step."""

        async def work(conn: Any) -> bool:
            room = await (await conn.execute(pg(hotel.AVAILABLE_SQL), (hotel_id, day))).fetchone()
            if room is None or room[0] <= 0:
                return False
            taken = await conn.execute(pg(hotel.TAKE_ROOM_SQL), (hotel_id, day))
            if taken.rowcount != 1:
                return False
            await conn.execute(pg(hotel.ADD_RESERVATION_SQL), (hotel_id, day, customer))
            return True

        booked: bool = await self.transact(work)
        _ = f"to {customer}: booked={booked}"  # the confirmation step's stand-in
        return booked

    # -- shop ---------------------------------------------------------------------------

    async def browse(self, item_id: int) -> list[Any] | None:
        """The product page."""

        async def work(conn: Any) -> list[Any] | None:
            row = await (await conn.execute(pg(shop.ITEM_SQL), (item_id,))).fetchone()
            return None if row is None else list(row)

        result: list[Any] | None = await self.transact(work)
        return result

    async def add_to_cart(self, cart_id: int, item_id: int, quantity: int) -> int:
        """Add to the cart and take from the stock, in one transaction."""

        async def work(conn: Any) -> int:
            row = await (await conn.execute(pg(shop.PRICE_STOCK_SQL), (item_id,))).fetchone()
            if row is None or row[1] < quantity:
                return 0
            await conn.execute(pg(shop.ADD_LINE_SQL), (cart_id, item_id, quantity, row[0]))
            taken = await conn.execute(pg(shop.TAKE_STOCK_SQL), (quantity, item_id, quantity))
            if taken.rowcount != 1:
                raise RuntimeError(f"item {item_id}: stock changed within the transaction")
            return quantity

        added: int = await self.transact(work)
        return added

    async def checkout(self, cart_id: int, order_id: str) -> int:
        """Order the cart and pay in one transaction, then the shipping step."""

        async def work(conn: Any) -> int:
            lines = await (await conn.execute(pg(shop.CART_SQL), (cart_id,))).fetchall()
            if not lines:
                return 0
            amount = 0
            for item_id, quantity, price in lines:
                await conn.execute(pg(shop.ORDER_LINE_SQL), (order_id, item_id, quantity, price))
                amount += quantity * price
            await conn.execute(pg(shop.PAYMENT_SQL), (order_id, cart_id, amount))
            await conn.execute(pg(shop.EMPTY_CART_SQL), (cart_id,))
            return amount

        amount: int = await self.transact(work)
        _ = f"order {order_id} ({amount}) shipped"  # the shipping step's stand-in
        return amount

    async def update_item(self, item_id: int, price: int) -> bool:
        """Change an item's price."""

        async def work(conn: Any) -> bool:
            cur = await conn.execute(pg(shop.SET_PRICE_SQL), (price, item_id))
            return bool(cur.rowcount == 1)

        changed: bool = await self.transact(work)
        return changed

    # -- retwis -------------------------------------------------------------------------

    async def timeline(self, user_id: int) -> list[list[Any]]:
        """The user's timeline."""

        async def work(conn: Any) -> list[list[Any]]:
            rows = await (await conn.execute(pg(retwis.TIMELINE_SQL), (user_id,))).fetchall()
            return [list(row) for row in rows]

        posts: list[list[Any]] = await self.transact(work)
        return posts

    async def post(self, user_id: int, post_id: str, ts: int, body: str) -> bool:
        """Post a message."""

        async def work(conn: Any) -> bool:
            await conn.execute(pg(retwis.POST_SQL), (post_id, user_id, ts, body))
            return True

        done: bool = await self.transact(work)
        return done

    async def follow(self, follower: int, followee: int) -> bool:
        """Follow a user; whether the follow is new."""

        async def work(conn: Any) -> bool:
            cur = await conn.execute(pg(retwis.FOLLOW_SQL), (follower, followee))
            return bool(cur.rowcount == 1)

        added: bool = await self.transact(work)
        return added

    # -- counter ------------------------------------------------------------------------

    async def read(self, counter_id: int) -> int | None:
        """A counter's value."""

        async def work(conn: Any) -> int | None:
            row = await (await conn.execute(pg(counter.READ_SQL), (counter_id,))).fetchone()
            return None if row is None else int(row[0])

        value: int | None = await self.transact(work)
        return value

    async def increment(self, counter_id: int) -> int | None:
        """Increment a counter; its new value."""

        async def work(conn: Any) -> int | None:
            cur = await conn.execute(pg(counter.INCREMENT_SQL), (counter_id,))
            row = await cur.fetchone()
            return None if row is None else int(row[0])

        value: int | None = await self.transact(work)
        return value


#: Workload -> the operations (workflow names) its routes serve.
OPERATIONS = {
    "hotel": ("search", "reserve"),
    "shop": ("browse", "add_to_cart", "checkout", "update_item"),
    "retwis": ("timeline", "post", "follow"),
    "counter": ("read", "increment"),
}


def make_app(workload: str, db_url: str, pool_min: int, pool_max: int) -> Any:
    """The Starlette application serving one workload's operations."""
    import contextlib

    from psycopg import IsolationLevel
    from psycopg_pool import AsyncConnectionPool
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def configure(conn: Any) -> None:
        await conn.set_autocommit(True)  # conn.transaction() sends BEGIN and COMMIT
        await conn.set_isolation_level(IsolationLevel.SERIALIZABLE)

    pool = AsyncConnectionPool(
        db_url, min_size=pool_min, max_size=pool_max, configure=configure, open=False
    )
    service = Service(pool)

    def route(name: str) -> Route:
        handler: Handler = getattr(service, name)

        async def endpoint(request: Request) -> JSONResponse:
            args = await request.json()
            try:
                output = await handler(**args)
            except TypeError as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            return JSONResponse({"output": output})

        return Route(f"/{name}", endpoint, methods=["POST"])

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> Any:
        await pool.open(wait=True)
        try:
            yield
        finally:
            await pool.close()

    routes = [route(name) for name in OPERATIONS[workload]]
    routes.append(Route("/health", health, methods=["GET"]))
    return Starlette(routes=routes, lifespan=lifespan)


def main(argv: list[str] | None = None) -> None:
    """Serve one workload with uvicorn."""
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m apiary._bench.rpc_service")
    parser.add_argument("--workload", choices=list(OPERATIONS), required=True)
    parser.add_argument("--db", required=True, help="postgresql://... of the loaded database")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--pool", type=int, default=4, help="connections kept open")
    args = parser.parse_args(argv)
    app = make_app(args.workload, args.db, args.pool, max(args.pool, 16))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":  # pragma: no cover
    main()
