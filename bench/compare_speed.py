"""`jsondiff.diff` against plain `DeepDiff(a, b)` on realistic JSON API responses.

Run: `.venv/bin/python bench/compare_speed.py [--budget 2]`.

Why: the comparison worker diffs every mirrored pair, and most pairs are equal or differ in
one leaf. This times both on ~0.8 KB, ~8 KB and ~80 KB responses (a user with a nested address,
a page of orders with items), each equal and with one changed leaf deep inside a list, side by
side in one process, and checks the targets: >= 50x on 8 KB with one changed leaf, >= 500x
on equal pairs. Each figure is the median over repeated batches timed with perf_counter;
both sides get a fresh parse of the same bytes, as the worker does.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import orjson
from deepdiff import DeepDiff

from shadowdiff.compare.jsondiff import diff

SIZES = {"0.8 KB": 800, "8 KB": 8_000, "80 KB": 80_000}
TARGET_CHANGED = 50.0  # on 8 KB with one changed leaf
TARGET_EQUAL = 500.0  # on every equal pair
STATUSES = ["placed", "paid", "shipped", "delivered", "refunded"]
CITIES = ["Lyon", "Porto", "Gdańsk", "Zürich", "Malmö", "Dublin"]


def address(rng: random.Random) -> dict[str, Any]:
    return {
        "street": f"{rng.randint(1, 200)} {rng.choice(['Main', 'High', 'Station'])} Street",
        "city": rng.choice(CITIES),
        "zip": f"{rng.randint(10000, 99999)}",
        "geo": {"lat": round(rng.uniform(-90, 90), 6), "lng": round(rng.uniform(-180, 180), 6)},
    }


def order(rng: random.Random, number: int) -> dict[str, Any]:
    items = [
        {
            "sku": f"SKU-{rng.randint(1000, 9999)}",
            "name": rng.choice(["Kettle", "Lamp", "Chair", "Mug", "Desk"]),
            "qty": rng.randint(1, 5),
            "price": round(rng.uniform(2, 300), 2),
            "tags": rng.sample(["new", "sale", "eco", "gift"], 2),
        }
        for _ in range(rng.randint(1, 4))
    ]
    return {
        "id": f"ord_{number:06d}",
        "status": rng.choice(STATUSES),
        "total": round(sum(i["qty"] * i["price"] for i in items), 2),
        "currency": "EUR",
        "items": items,
        "shipping": {"method": rng.choice(["post", "courier"]), "address": address(rng)},
        "placed_at": f"2026-11-{rng.randint(1, 27):02d}T{rng.randint(0, 23):02d}:00:00Z",
    }


def response(orders: int) -> dict[str, Any]:
    rng = random.Random(orders)
    return {
        "user": {
            "id": 4242,
            "name": "Ada Example",
            "email": "ada@example.com",
            "address": address(rng),
            "roles": ["customer", "beta"],
            "verified": True,
            "manager": None,
        },
        "orders": [order(rng, n) for n in range(orders)],
        "page": {"size": orders, "next": "cursor-abc" if orders else None},
        "meta": {"request_id": "req-7f3a", "generated_at": "2026-11-27T15:00:00Z"},
    }


def sized(target: int) -> bytes:
    """The smallest response with at least `target` bytes of JSON."""
    orders = 0
    while len(body := orjson.dumps(response(orders))) < target:
        orders += 1
    return body


def one_leaf_changed(body: bytes) -> bytes:
    doc = orjson.loads(body)
    orders = doc["orders"]
    orders[len(orders) // 2]["items"][-1]["price"] += 0.01
    return orjson.dumps(doc)


def median_seconds(call: Callable[[], object], budget: float) -> float:
    """Median time per call over batches of at least ~2 ms, for about `budget` seconds."""
    batch = 1
    while True:
        start = time.perf_counter()
        for _ in range(batch):
            call()
        if time.perf_counter() - start >= 0.002:
            break
        batch *= 2
    samples: list[float] = []
    deadline = time.perf_counter() + budget
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 500):
        start = time.perf_counter()
        for _ in range(batch):
            call()
        samples.append((time.perf_counter() - start) / batch)
    return statistics.median(samples)


def readable(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.1f} µs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=2.0, help="seconds per measurement")
    args = parser.parse_args()

    rows: list[tuple[str, str, int, float, float]] = []
    for size, target in SIZES.items():
        body = sized(target)
        for pair, other in (("equal", body), ("one changed leaf", one_leaf_changed(body))):
            a, b = orjson.loads(body), orjson.loads(other)
            found = diff(a, b)
            expected = [] if pair == "equal" else ["changed"]
            assert [d.kind for d in found] == expected, found
            assert bool(DeepDiff(a, b)) == bool(found)
            theirs = median_seconds(lambda a=a, b=b: DeepDiff(a, b), args.budget)
            ours = median_seconds(lambda a=a, b=b: diff(a, b), args.budget)
            rows.append((size, pair, len(body), theirs, ours))
            where = f"  ({found[0].path})" if found else ""
            print(
                f"{size:>6}  {pair:<16} {len(body):>6} B  DeepDiff {readable(theirs):>10}"
                f"  diff {readable(ours):>9}  {theirs / ours:>8.0f}x{where}",
                flush=True,
            )

    changed_8k = next(t / o for s, p, _, t, o in rows if s == "8 KB" and p != "equal")
    equal = min(t / o for _, p, _, t, o in rows if p == "equal")
    print()
    print(f"target >= {TARGET_CHANGED:.0f}x on 8 KB, one changed leaf: {changed_8k:.0f}x", end=" ")
    print("met" if changed_8k >= TARGET_CHANGED else "MISSED")
    print(f"target >= {TARGET_EQUAL:.0f}x on equal pairs (lowest): {equal:.0f}x", end=" ")
    print("met" if equal >= TARGET_EQUAL else "MISSED")
    print()
    print("| Response | Pair | DeepDiff | `jsondiff.diff` | Speed-up |")
    print("|---|---|---:|---:|---:|")
    for size, pair, length, theirs, ours in rows:
        print(
            f"| {size} ({length:,} B) | {pair} | {readable(theirs)} | {readable(ours)} "
            f"| {theirs / ours:,.0f}× |"
        )


if __name__ == "__main__":
    main()
