"""Hotel reservation (DeathStarBench ``hotelReservation``, as in the Apiary paper).

Operations (``MIX``: 80% search, 20% reserve):

* ``search(lat, lon, day)``: read-only. ``nearby`` finds up to 5 hotels in a box around the
  point (the geo service), ``hotel_offers`` reads each one's rate and its rooms left on
  that day (the rate service) and keeps those with a room. Both run as one read-only
  transaction (``apiary.transaction()``), so the answer is one consistent snapshot.
* ``reserve(hotel_id, day, customer)``: ``check_avail`` and ``reserve_room`` as one
  multi-function transaction (the availability check and the reservation cannot be split
  by another booking), then the ``confirm`` step (a stand-in for the notification
  service, idempotent by its key). Returns whether a room was booked.

Data (``SCALES``): ``hotels`` hotels on a grid of 10 columns 0.01 degrees apart, each
open for ``days`` days with ``rooms`` rooms a day. Default: 100 hotels (DeathStarBench has
80), 30 days, 500 rooms; ``tiny``: 10 hotels, 5 days, 20 rooms (so some days sell out).
Searches pick a random point in the grid's area and a random day; reservations a random
hotel and day and a customer name used once.

Invariants checked after a run: no day has fewer than 0 rooms; on every hotel and day the
rooms taken equal the reservations made; the reservations equal the ``reserve`` calls
that answered ``true``.

``logged_app`` is the same app with *manual logging*: every function also inserts, in its
transaction, one ``app_log`` row per statement it ran (function, read/write, table and
the keys of the rows), as an application that logs its own data accesses does; it is
what the paper compares built-in tracing against.

Apps, SQL and data use only the standard library and ``apiary``: this module is shipped
into PostgreSQL for ``placement=db``. The SQL texts are module constants (``*_SQL``) so
that baselines run exactly the same statements.
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

NAME = "hotel"

SCALES: dict[str, dict[str, int]] = {
    "tiny": {"hotels": 10, "days": 5, "rooms": 20},
    "default": {"hotels": 100, "days": 30, "rooms": 500},
}

#: Share of each operation; the runner draws them in these proportions.
MIX: dict[str, float] = {"search": 0.8, "reserve": 0.2}

SCHEMA = """
CREATE TABLE IF NOT EXISTS hotels (
    hotel_id INTEGER PRIMARY KEY,
    name     TEXT NOT NULL,
    lat      DOUBLE PRECISION NOT NULL,
    lon      DOUBLE PRECISION NOT NULL,
    rate     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS hotels_by_place ON hotels (lat, lon);
CREATE TABLE IF NOT EXISTS rooms (
    hotel_id  INTEGER NOT NULL,
    day       INTEGER NOT NULL,
    available INTEGER NOT NULL,
    PRIMARY KEY (hotel_id, day)
);
CREATE TABLE IF NOT EXISTS reservations (
    hotel_id INTEGER NOT NULL,
    day      INTEGER NOT NULL,
    customer TEXT NOT NULL,
    PRIMARY KEY (hotel_id, day, customer)
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

NEARBY_SQL = (
    "SELECT hotel_id FROM hotels WHERE lat BETWEEN ? AND ? AND lon BETWEEN ? AND ? "
    "ORDER BY hotel_id LIMIT 5"
)
RATE_SQL = "SELECT name, rate FROM hotels WHERE hotel_id = ?"
AVAILABLE_SQL = "SELECT available FROM rooms WHERE hotel_id = ? AND day = ?"
TAKE_ROOM_SQL = (
    "UPDATE rooms SET available = available - 1 WHERE hotel_id = ? AND day = ? AND available > 0"
)
ADD_RESERVATION_SQL = "INSERT INTO reservations (hotel_id, day, customer) VALUES (?, ?, ?)"
LOG_SQL = (
    "INSERT INTO app_log (invocation_id, function, op, tbl, row_keys, logged_at) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)

NEARBY = apiary.sql(NEARBY_SQL)
RATE = apiary.sql(RATE_SQL)
AVAILABLE = apiary.sql(AVAILABLE_SQL)
TAKE_ROOM = apiary.sql(TAKE_ROOM_SQL)
ADD_RESERVATION = apiary.sql(ADD_RESERVATION_SQL)
LOG = apiary.sql(LOG_SQL)

#: Half the side of the search box, in degrees: about 3 x 3 grid cells.
RADIUS = 0.015
ORIGIN = (37.70, -122.40)
COLUMNS = 10
SPACING = 0.01


def _log(ctx: apiary.TxContext, log: Any, function: str, op: str, table: str, keys: Any) -> None:
    """Manual logging: one ``app_log`` row per statement (only in ``logged_app``)."""
    if log is not None:
        ctx.execute(log, ctx.invocation_id, function, op, table, json.dumps(keys), time.time())


def _build(name: str, *, logged: bool) -> apiary.App:
    """The hotel app; with ``logged``, every function also logs what it read and wrote.

    The log statement reaches the functions as a closure variable, so the plain app's
    functions never name it and its read-only functions stay read-only.
    """
    app = apiary.App(name)
    app.schema(SCHEMA + (LOG_SCHEMA if logged else ""))
    log = LOG if logged else None

    @app.function
    def nearby(ctx: apiary.TxContext, lat: float, lon: float) -> list[int]:
        """Up to 5 hotels in the box around (lat, lon)."""
        rows = ctx.query(NEARBY, lat - RADIUS, lat + RADIUS, lon - RADIUS, lon + RADIUS)
        found = [int(r[0]) for r in rows]
        _log(ctx, log, "nearby", "read", "hotels", found)
        return found

    @app.function
    def hotel_offers(ctx: apiary.TxContext, hotel_ids: list[int], day: int) -> list[list[Any]]:
        """``[hotel_id, name, rate, rooms left]`` of each hotel with a room on ``day``."""
        offers: list[list[Any]] = []
        for hotel_id in hotel_ids:
            rate = ctx.query_one(RATE, hotel_id)
            room = ctx.query_one(AVAILABLE, hotel_id, day)
            _log(ctx, log, "hotel_offers", "read", "hotels", [hotel_id])
            _log(ctx, log, "hotel_offers", "read", "rooms", [hotel_id, day])
            if rate is not None and room is not None and room[0] > 0:
                offers.append([hotel_id, rate[0], rate[1], room[0]])
        return offers

    @app.function
    def check_avail(ctx: apiary.TxContext, hotel_id: int, day: int) -> bool:
        """Whether the hotel has a room left on that day."""
        row = ctx.query_one(AVAILABLE, hotel_id, day)
        _log(ctx, log, "check_avail", "read", "rooms", [hotel_id, day])
        return row is not None and row[0] > 0

    @app.function
    def reserve_room(
        ctx: apiary.TxContext, hotel_id: int, day: int, customer: str, ok: bool
    ) -> bool:
        """Take a room and record the reservation, if one was available."""
        if not ok or ctx.execute(TAKE_ROOM, hotel_id, day) != 1:
            return False
        ctx.execute(ADD_RESERVATION, hotel_id, day, customer)
        _log(ctx, log, "reserve_room", "update", "rooms", [hotel_id, day])
        _log(ctx, log, "reserve_room", "insert", "reservations", [hotel_id, day, customer])
        return True

    @app.step
    def confirm(ctx: apiary.StepContext, customer: str, booked: bool) -> str:
        """Stand-in for the notification service; its key makes a resend harmless."""
        return f"to {customer} (key {ctx.idempotency_key}): booked={booked}"

    @app.workflow
    def search(lat: float, lon: float, day: int):  # type: ignore[no-untyped-def]
        """Hotels near a point with a room on ``day``, with their rates (read-only)."""
        with apiary.transaction():
            hotels = nearby(lat, lon)
            offers = hotel_offers(hotels, day)
        return offers

    @app.workflow
    def reserve(hotel_id: int, day: int, customer: str):  # type: ignore[no-untyped-def]
        """Check and reserve in one transaction, then confirm; returns whether booked."""
        with apiary.transaction():
            ok = check_avail(hotel_id, day)
            booked = reserve_room(hotel_id, day, customer, ok)
        confirm(customer, booked)
        return booked

    return app


app = _build("bench_hotel", logged=False)
logged_app = _build("bench_hotel_logged", logged=True)


def place(hotel_id: int) -> tuple[float, float]:
    """Where hotel ``hotel_id`` stands (a grid of ``COLUMNS`` columns)."""
    row, column = divmod(hotel_id - 1, COLUMNS)
    return ORIGIN[0] + row * SPACING, ORIGIN[1] + column * SPACING


def data(p: Mapping[str, int]) -> Iterator[tuple[str, Sequence[str], Iterator[tuple[Any, ...]]]]:
    """The initial rows: ``(table, columns, rows)`` per table."""
    rng = random.Random(11)
    hotels = range(1, p["hotels"] + 1)
    yield (
        "hotels",
        ("hotel_id", "name", "lat", "lon", "rate"),
        ((h, f"hotel {h}", *place(h), rng.randint(80, 400)) for h in hotels),
    )
    yield (
        "rooms",
        ("hotel_id", "day", "available"),
        ((h, d, p["rooms"]) for h in hotels for d in range(1, p["days"] + 1)),
    )


def operation(
    op: str, rng: random.Random, p: Mapping[str, int], uid: str
) -> tuple[str, dict[str, Any]]:
    """The workflow and arguments of one ``op``; ``uid`` is unique to this operation."""
    day = rng.randint(1, p["days"])
    if op == "search":
        rows = (p["hotels"] + COLUMNS - 1) // COLUMNS
        lat = ORIGIN[0] + rng.uniform(0, max(rows - 1, 0) * SPACING)
        lon = ORIGIN[1] + rng.uniform(0, (min(p["hotels"], COLUMNS) - 1) * SPACING)
        return "search", {"lat": lat, "lon": lon, "day": day}
    hotel_id = rng.randint(1, p["hotels"])
    return "reserve", {"hotel_id": hotel_id, "day": day, "customer": f"c{uid}"}


def check(
    query: Callable[[str], list[tuple[Any, ...]]], p: Mapping[str, int], done: Mapping[str, int]
) -> str:
    """Check the invariants after a run (see the module docstring); return a summary."""
    lowest = query("SELECT min(available) FROM rooms")[0][0]
    if lowest is None or lowest < 0:
        raise AssertionError(f"hotel: a day has {lowest} rooms left")
    wrong = query(
        f"SELECT count(*) FROM rooms r WHERE {p['rooms']} - r.available <> "
        "(SELECT count(*) FROM reservations b WHERE b.hotel_id = r.hotel_id AND b.day = r.day)"
    )[0][0]
    if wrong:
        raise AssertionError(f"hotel: on {wrong} hotel-days rooms taken != reservations")
    made = query("SELECT count(*) FROM reservations")[0][0]
    booked = done.get("reserve=true", 0)
    if made != booked:
        raise AssertionError(f"hotel: {made} reservations, but {booked} reserve calls booked")
    return f"{made:,} reservations = rooms taken = bookings answered; no day below 0 rooms"
