"""ccxt's side of `python -m bench.depth`: binance `fetch_ohlcv` with ccxt's own
pagination (`paginate: True`) against the simulator, under ccxt's rate limiter.

Runs in the benchmark's own environment (`sh bench/ccxt-env.sh` makes
`.bench-venv`), never candled's: stdlib and ccxt only, no candled import.

    .bench-venv/bin/python bench/ccxt_ohlcv.py '{"rest_url": "http://127.0.0.1:PORT",
        "symbols": ["D000USDT"], "since_ms": ..., "until_ms": ..., "rate_limit_ms": 50}'

prints one JSON line: wall seconds, candles per symbol, errors by type, CPU seconds.

Rate limit: ccxt's binance counts a klines request as cost 0.4 (= 0.2 x its
weight of 2) against a leaky bucket refilled 1 cost per `rateLimit` ms; its
default rateLimit of 50 ms is Binance's 6,000 weight a minute. For a budget of
B weight per P seconds the matching rateLimit is 5,000 x P / B ms (the caller
computes it).
"""

from __future__ import annotations

import asyncio
import json
import math
import resource
import sys
import time
from typing import Any

import ccxt.async_support as ccxt  # type: ignore[import-not-found]

PAGE = 1000  # ccxt's maxEntriesPerRequest for binance's klines
MINUTE_MS = 60_000


def _market(market_id: str) -> dict[str, Any]:
    """A spot market as ccxt's `load_markets` would build it (the simulator has
    no /api/v3/exchangeInfo, so the markets are set, not loaded)."""
    base, quote = market_id[:-4], market_id[-4:]
    return {
        "id": market_id, "symbol": f"{base}/{quote}", "base": base, "quote": quote,
        "baseId": base, "quoteId": quote, "settle": None, "settleId": None,
        "type": "spot", "spot": True, "margin": False, "swap": False, "future": False,
        "option": False, "contract": False, "linear": None, "inverse": None,
        "active": True, "contractSize": None, "expiry": None, "expiryDatetime": None,
        "strike": None, "optionType": None, "taker": 0.001, "maker": 0.001,
        "precision": {"amount": 1e-8, "price": 1e-8},
        "limits": {"amount": {"min": None, "max": None}, "price": {"min": None, "max": None},
                   "cost": {"min": None, "max": None}, "leverage": {"min": None, "max": None}},
        "info": {},
    }  # fmt: skip


async def _run(args: dict[str, Any]) -> dict[str, Any]:
    exchange = ccxt.binance({"enableRateLimit": True, "rateLimit": args["rate_limit_ms"]})
    exchange.urls["api"]["public"] = args["rest_url"] + "/api/v3"
    exchange.set_markets([_market(s) for s in args["symbols"]])
    since, until = args["since_ms"], args["until_ms"]
    calls = math.ceil((until - since) / (PAGE * MINUTE_MS))
    params = {"paginate": True, "paginationCalls": calls, "until": until - 1}
    errors: dict[str, int] = {}
    candles: dict[str, int] = {}
    started = time.time()
    try:

        async def one(market_id: str) -> None:
            symbol = exchange.markets_by_id[market_id][0]["symbol"]
            try:
                rows = await exchange.fetch_ohlcv(symbol, "1m", since, None, dict(params))
            except Exception as e:  # ccxt's errors: counted by type, the run goes on
                errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                rows = []
            candles[market_id] = sum(1 for r in rows if since <= r[0] < until)

        # Every symbol at once, as a caller in a hurry would: ccxt's throttle
        # (one queue per exchange instance) decides when each request goes.
        await asyncio.gather(*(one(s) for s in args["symbols"]))
        secs = time.time() - started
    finally:
        await exchange.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "ccxt": ccxt.__version__, "secs": secs, "candles": candles, "errors": errors,
        "pagination_calls": calls, "cpu_s": usage.ru_utime + usage.ru_stime,
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_run(json.loads(sys.argv[1])))), flush=True)
