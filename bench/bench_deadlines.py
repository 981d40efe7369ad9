"""The deadline agent's costs (docs/deadlines.md, "Known limits"), side by side in one run.

Run: .venv/bin/python bench/bench_deadlines.py [open-deliveries]

- fold: audit entries per second through decode + DeadlineBook.apply (a DELIVERY and a RECEIPT per
  delivery, as the agent reads them from the single audit partition), with the book in memory and
  in RocksDB (as a worker keeps it; its rate over the first and the last fifth of the deliveries, so
  that a slowdown as the book grows shows);
- notice: notices sealed and signed per second (one per delivery and per receipt);
- look: one look at the clock (due_actions + the overdue gauge) over N open deliveries;
- memory: bytes per open delivery held by the owner (tracemalloc), and per state record in Kafka.
"""

from __future__ import annotations

import random
import sys
import tempfile
import time
import tracemalloc
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from streams.audit.entry import decode_entry, encode_entry, make_entry  # noqa: E402
from streams.crypto.keys import generate_key  # noqa: E402
from streams.crypto.notice import NoticeSealer  # noqa: E402
from streams.deadline_store import RocksTrackings  # noqa: E402
from streams.deadlines import DeadlineBook, NoticeRequest  # noqa: E402
from streams.policy import load_policy  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POLICY = load_policy(ROOT / "tests/fixtures/policy/valid.yaml")
T0 = datetime(2026, 11, 27, 19, 30, tzinfo=timezone.utc)


def event_id(i: int) -> str:
    """The i-th event id: random-looking, as publishers' UUIDs are (sequential ids would fill the
    RocksDB book in key order, which hides the cost of looking up keys that are not there)."""
    return str(uuid.UUID(int=random.Random(i).getrandbits(128)))


def entries(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        out.append(encode_entry(make_entry(
            "DELIVERY", recorded_at=T0, event_id=event_id(i), event_type="MARAC_REFERRAL", unit_id="hau-south",
            area="worcestershire", agency_id="council-housing", agreement_id="isa-housing", agreement_version=1,
            policy_version=4, policy_digest="0" * 64, legal_basis="CRIME_AND_DISORDER_ACT_1998_S115",
            fields=["header", "victim.name"], envelope_sha256="ab" * 32, recipient_key_id="3e7b7076d6173182",
            deliver_by=T0 + timedelta(hours=6), source=f"case-events/0/{i}")))
    return out


def rocks_fold(deliveries: list[bytes], receipts: list[bytes]) -> tuple[float, float, float]:
    """Entries/s folding into a RocksDB book: over the first fifth of the deliveries, the last fifth,
    and everything (deliveries, then receipts)."""
    with tempfile.TemporaryDirectory() as tmp:
        store = RocksTrackings(Path(tmp) / "book")
        try:
            book = DeadlineBook(store=store)
            fifth = max(1, len(deliveries) // 5)
            rates, start = [], time.perf_counter()
            for offset, data in enumerate(deliveries + receipts):
                if offset % fifth == 0 and offset <= len(deliveries):
                    rates.append((offset, time.perf_counter()))
                book.apply(offset, decode_entry(data), POLICY, T0)
            total = (len(deliveries) + len(receipts)) / (time.perf_counter() - start)
        finally:
            store.close()
    first = fifth / (rates[1][1] - rates[0][1])
    last = fifth / (rates[5][1] - rates[4][1]) if len(rates) > 5 else first
    return first, last, total


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 20_000
    deliveries = entries(n)
    receipts = [encode_entry(make_entry("RECEIPT", recorded_at=T0 + timedelta(hours=1), event_id=event_id(i),
                                        agency_id="council-housing", envelope_sha256="ab" * 32, policy_version=4,
                                        reason="RECEIVED at 2026-11-27T20:30:00+00:00")) for i in range(n // 2)]

    book = DeadlineBook()
    start = time.perf_counter()
    for offset, data in enumerate(deliveries + receipts):
        book.apply(offset, decode_entry(data), POLICY, T0)
    fold = (len(deliveries) + len(receipts)) / (time.perf_counter() - start)
    rocks = rocks_fold(deliveries, receipts)
    tracemalloc.start()  # a second book, measured (tracemalloc slows the fold down)
    measured = DeadlineBook()
    for offset, data in enumerate(deliveries + receipts):
        measured.apply(offset, decode_entry(data), POLICY, T0)
    held, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del measured

    sealer = NoticeSealer(generate_key("router", "signing"), generate_key("router", "exchange"))
    unit = generate_key("hau-south", "exchange")
    tracking = next(iter(book.trackings.values()))
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < 1.0:
        sealer.seal(unit_id="hau-south", unit_key_id=unit.key_id, unit_public_key=unit.public_key,
                    content=NoticeRequest("DELIVERED", tracking, T0).content(), created_at=T0)
        count += 1
    notices = count / (time.perf_counter() - start)

    now = T0 + timedelta(hours=5)
    start = time.perf_counter()
    book.due_actions(now)
    book.overdue_by_agency(now)
    look = time.perf_counter() - start
    record = len(tracking.to_json())

    print(f"deadline agent, {len(book):,} open deliveries ({n:,} delivered, {len(receipts):,} received):")
    print(f"  fold     {fold:>10,.0f} audit entries/s (decode + apply)")
    print(f"  fold     {rocks[0]:>10,.0f} -> {rocks[1]:,.0f} audit entries/s with the book in RocksDB (first -> last "
          f"fifth of the deliveries), {rocks[2]:,.0f} over all")
    print(f"  notice   {notices:>10,.0f} notices/s sealed and signed")
    print(f"  look     {look * 1000:>10,.1f} ms per look at the clock (due actions + overdue gauge)")
    print(f"  memory   {held / max(1, len(book)):>10,.0f} bytes per open delivery in the owner's memory; "
          f"{record} bytes per state record")


if __name__ == "__main__":
    main()
