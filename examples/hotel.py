"""The hotel app of the design: check availability and reserve as one transaction, then mail.

Run it with ``apiary demo``, or::

    apiary install examples/hotel.py:app --db sqlite:///hotel.db
    apiary run examples/hotel.py:app open_hotel --db sqlite:///hotel.db \
        --arg hotel_id=1 --arg first_day=1 --arg days=7 --arg rooms=3
    apiary run examples/hotel.py:app book_room --db sqlite:///hotel.db \
        --arg hotel_id=1 --arg day=3 --arg customer=ann
"""

import apiary

app = apiary.App("hotel")
app.schema("""
CREATE TABLE IF NOT EXISTS rooms (hotel_id INTEGER, day INTEGER, available INTEGER,
                                  PRIMARY KEY (hotel_id, day));
CREATE TABLE IF NOT EXISTS bookings (hotel_id INTEGER, day INTEGER, customer TEXT,
                                     PRIMARY KEY (hotel_id, day, customer));
""")

AVAILABLE = apiary.sql("SELECT available FROM rooms WHERE hotel_id = ? AND day = ?")
TAKE_ROOM = apiary.sql("UPDATE rooms SET available = available - 1 WHERE hotel_id = ? AND day = ?")
ADD_BOOKING = apiary.sql("INSERT INTO bookings (hotel_id, day, customer) VALUES (?, ?, ?)")
OPEN_DAY = apiary.sql(
    "INSERT INTO rooms (hotel_id, day, available) VALUES (?, ?, ?) "
    "ON CONFLICT (hotel_id, day) DO UPDATE SET available = excluded.available"
)
BOOKINGS = apiary.sql(
    "SELECT day, customer FROM bookings WHERE hotel_id = ? ORDER BY day, customer"
)
ROOMS = apiary.sql("SELECT day, available FROM rooms WHERE hotel_id = ? ORDER BY day")


@app.function(partition="hotel_id")
def check_avail(ctx: apiary.TxContext, hotel_id: int, day: int) -> bool:
    """Whether the hotel has a room left on that day."""
    row = ctx.query_one(AVAILABLE, hotel_id, day)
    return row is not None and row[0] > 0


@app.function(partition="hotel_id")
def reserve(ctx: apiary.TxContext, hotel_id: int, day: int, customer: str, ok: bool) -> bool:
    """Take a room and record the booking, if one was available."""
    if not ok:
        return False
    ctx.execute(TAKE_ROOM, hotel_id, day)
    ctx.execute(ADD_BOOKING, hotel_id, day, customer)
    return True


@app.step
def send_email(ctx: apiary.StepContext, customer: str, booked: bool) -> str:
    """Stand-in for a mail service call; the idempotency key makes a resend harmless."""
    return f"mail to {customer} (key {ctx.idempotency_key}): booked={booked}"


@app.workflow
def book_room(hotel_id: int, day: int, customer: str):  # type: ignore[no-untyped-def]
    """Book a room: availability check and reservation in one transaction, then mail."""
    with apiary.transaction():
        ok = check_avail(hotel_id, day)
        booked = reserve(hotel_id, day, customer, ok)
    send_email(customer, booked)
    return booked


@app.function(partition="hotel_id")
def open_days(ctx: apiary.TxContext, hotel_id: int, first_day: int, days: int, rooms: int) -> int:
    """Offer ``rooms`` rooms on each of ``days`` days from ``first_day``."""
    for day in range(first_day, first_day + days):
        ctx.execute(OPEN_DAY, hotel_id, day, rooms)
    return days


@app.workflow
def open_hotel(hotel_id: int, first_day: int, days: int, rooms: int):  # type: ignore[no-untyped-def]
    """Open a hotel for booking."""
    return open_days(hotel_id, first_day, days, rooms)


@app.function(partition="hotel_id")
def occupancy(ctx: apiary.TxContext, hotel_id: int) -> dict[str, list[list[object]]]:
    """Rooms left and bookings made, per day (read-only)."""
    return {
        "rooms": [list(r) for r in ctx.query(ROOMS, hotel_id)],
        "bookings": [list(r) for r in ctx.query(BOOKINGS, hotel_id)],
    }


@app.workflow
def hotel_report(hotel_id: int):  # type: ignore[no-untyped-def]
    """A read-only workflow: records nothing and writes no status row."""
    return occupancy(hotel_id)
