"""CPU per candle on the REST history path: a 1,000-row Binance klines page
through `BinanceCodec.parse_history`, then `validate.problem` on each candle.

python -m bench.parse                 # best of 30 rounds of 20 pages
python -m bench.parse --rounds 5 --pages 4
# instructions: the difference between two page counts (start-up cancels out)
valgrind --tool=callgrind python -m bench.parse --rounds 1 --pages 2
valgrind --tool=callgrind python -m bench.parse --rounds 1 --pages 12

The page is the simulator's wire (`candled_sim.binance.wire.kline_row`): the
bytes a backfill decodes at depth. Timing is best-of-N (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import random
import time
from datetime import UTC, datetime, timedelta

from candled.domain import Candle, SeriesKey
from candled.validate import problem
from candled.venues.binance import BinanceCodec
from candled_sim.binance.wire import kline_row

ROWS = 1000


def page(series: SeriesKey, start: datetime, rows: int = ROWS) -> bytes:
    """A klines answer of `rows` 1m bars from `start`, as the simulator writes it."""
    rng = random.Random(42)
    price, out = 42_000.0, []
    for i in range(rows):
        o = price
        c = max(1.0, o * (1 + rng.gauss(0, 0.0005)))
        h, low = max(o, c) * (1 + rng.random() * 0.0003), min(o, c) * (1 - rng.random() * 0.0003)
        v = rng.random() * 50
        ts = start + timedelta(minutes=i)
        out.append(
            kline_row(
                Candle(
                    series, ts, round(o, 2), round(h, 2), round(low, 2), round(c, 2), round(v, 5)
                )
            )
        )
        price = c
    return json.dumps(out).encode()


def main() -> None:
    """Time parse and validate separately and together; µs per candle, best round."""
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--pages", type=int, default=20, help="pages per round")
    args = ap.parse_args()
    codec = BinanceCodec()
    series = SeriesKey("binance", "BTCUSDT", "1m")
    body = page(series, datetime(2024, 1, 1, tzinfo=UTC))
    now = datetime(2025, 1, 1, tzinfo=UTC)
    candles = codec.parse_history(series, 200, body, now)
    assert len(candles) == ROWS and all(problem(c, now) is None for c in candles)
    n = ROWS * args.pages
    best = {"parse": float("inf"), "validate": float("inf"), "total": float("inf")}
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        for _ in range(args.pages):
            codec.parse_history(series, 200, body, now)
        t1 = time.perf_counter()
        for _ in range(args.pages):
            for c in candles:
                problem(c, now)
        t2 = time.perf_counter()
        for _ in range(args.pages):
            for c in codec.parse_history(series, 200, body, now):
                problem(c, now)
        t3 = time.perf_counter()
        for name, s in (("parse", t1 - t0), ("validate", t2 - t1), ("total", t3 - t2)):
            best[name] = min(best[name], s)
    print(f"{ROWS}-row Binance klines page, {args.pages} pages x {args.rounds} rounds (best)")
    for name, s in best.items():
        print(f"  {name:9s} {s / n * 1e6:6.2f} us/candle")


if __name__ == "__main__":
    main()
