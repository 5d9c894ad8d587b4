"""``apiary demo``: the hotel example on SQLite, narrated."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import apiary
from apiary._cli import render_explain
from apiary._loading import load_app

HOTEL, DAY, FIRST_DAY, DAYS = 1, 3, 1, 7


def example_path(name: str) -> Path:
    """Where an example app lives: the checkout's ``examples/``, or inside the wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parents[1] / "examples" / name, here / "_examples" / name):
        if candidate.is_file():
            return candidate
    raise apiary.NotFoundError(f"example {name!r} is not installed with this copy of apiary")


def run_demo(db: str | None, customers: int, rooms: int) -> int:
    """Run the demo; returns the process exit status (0 when every check holds)."""
    app = load_app(f"{example_path('hotel.py')}:app")
    folder = None
    if db is None:
        folder = tempfile.mkdtemp(prefix="apiary-demo-")
        db = f"sqlite:///{Path(folder) / 'hotel.db'}"
    print(f"1. Installing the hotel app into {db}")
    ok = True
    with apiary.Runtime(app, db) as rt:
        rt.install()
        rt.run("open_hotel", hotel_id=HOTEL, first_day=FIRST_DAY, days=DAYS, rooms=rooms)
        before = _state(rt)
        print(f"   hotel {HOTEL} opened: {rooms} rooms on each of days {FIRST_DAY}-{DAYS}")

        print(f"\n2. {customers} customers book day {DAY} at the same time")
        results: dict[str, bool] = {}
        errors: list[BaseException] = []

        def book(customer: str) -> None:
            try:
                results[customer] = rt.run("book_room", hotel_id=HOTEL, day=DAY, customer=customer)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=book, args=(f"guest-{i}",)) for i in range(customers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            print(f"   unexpected errors: {errors}")
            ok = False
        booked = sorted(c for c, b in results.items() if b)
        print(f"   booked:  {len(booked)}  {', '.join(booked)}")
        print(f"   refused: {len(results) - len(booked)}")
        after = _state(rt)
        left = after["rooms"][DAY]
        print(
            f"   rooms left on day {DAY}: {left}; bookings for day {DAY}: "
            f"{after['bookings'].get(DAY, 0)}"
        )
        consistent = (
            left >= 0
            and after["bookings"].get(DAY, 0) == len(booked) == before["rooms"][DAY] - left
            and len(booked) == min(customers, rooms)
        )
        print(f"   nothing overbooked: {'yes' if consistent else 'NO'}")
        ok = ok and consistent

        print("\n3. Replaying one workflow ID: the booking is not repeated")
        day = DAY + 1
        first = rt.run("book_room", workflow_id="demo-ann", hotel_id=HOTEL, day=day, customer="ann")
        taken = _state(rt)
        again = rt.run("book_room", workflow_id="demo-ann", hotel_id=HOTEL, day=day, customer="ann")
        replayed = _state(rt)
        print(
            f"   first run of 'demo-ann':  {first}  (rooms left on day {day}: "
            f"{taken['rooms'][day]})"
        )
        print(
            f"   second run of 'demo-ann': {again}  (rooms left on day {day}: "
            f"{replayed['rooms'][day]})"
        )
        same = first == again and taken == replayed
        print(f"   same answer, nothing executed twice: {'yes' if same else 'NO'}")
        ok = ok and same
        status = rt.status("demo-ann")
        print(f"   status of 'demo-ann': {status.status}, output {status.output!r}")

        print("\n4. The workflow as the registrar sees it (apiary explain)")
        print("   " + render_explain(rt.explain("book_room")).replace("\n", "\n   "))

        print(f"\n5. Who touched the room row of day {day}? (apiary trace row)")
        traced = _room_history(rt, day)
        ok = ok and traced
    if folder is not None:
        print(f"\nThe database is in {folder}")
    print("\nDemo " + ("passed: every check held." if ok else "FAILED: see above."))
    return 0 if ok else 1


def _room_history(rt: apiary.Runtime, day: int) -> bool:
    """Print every traced access to one ``rooms`` row; check the replay added none."""
    from apiary._tracing.cli import render_history
    from apiary._tracing.store import TraceStore
    from apiary._tracing.tables import tables_of

    if not rt.trace_store:
        print("   (tracing is off)")
        return True
    rt.spool()  # move the staged traces into the DuckDB store now
    with TraceStore(rt.trace_store, tables_of(rt.app.schemas), read_only=True) as store:
        history = store.row_history("rooms", hotel_id=HOTEL, day=day)
    filters = {"hotel_id": HOTEL, "day": day}
    print("   " + render_history("rooms", filters, history).replace("\n", "\n   "))
    updates = [a for a in history if a["op"] == "update"]
    once = len(updates) == 1 and updates[0]["workflow_id"] == "demo-ann"
    print(f"   one update, by 'demo-ann', none from the replay: {'yes' if once else 'NO'}")
    print(f"   the trace store is {rt.trace_store}")
    return once


def _state(rt: apiary.Runtime) -> dict[str, dict[int, int]]:
    report = rt.run("hotel_report", hotel_id=HOTEL)
    bookings: dict[int, int] = {}
    for day, _customer in report["bookings"]:
        bookings[day] = bookings.get(day, 0) + 1
    return {"rooms": dict(report["rooms"]), "bookings": bookings}
