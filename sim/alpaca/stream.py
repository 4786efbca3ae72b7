"""One connection to Alpaca's stock stream (`/v2/iex`, `/v2/sip`): auth and
(un)subscribe in, minute bars and corrected bars out."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from aiohttp import WSMsgType, web

from candled.domain import Candle, SeriesKey, Timeframe
from candled_sim.alpaca import wire
from candled_sim.personality import SimContext, send_json
from candled_sim.truth import SIM_VENUE

AUTH_TIMEOUT_S = 10.0
_MINUTE = Timeframe.parse("1m")
_PUSH_LAG_S = 0.05  # push just after a minute closes, as Alpaca does (20-100 ms)


class Plan(Protocol):
    """What a connection asks of the personality: the key's plan, and who is logged in."""

    feeds: set[str]  # the feeds the key's plan includes (others: 409)
    symbol_limit: int | None  # symbols a connection may subscribe (405)
    correction_delay_s: float  # "u" bars go out this long after the "b"
    authenticated: set[tuple[str, str]]  # (key, feed) logged in: one connection each


def corrected(seed: int, symbol: str, ts: datetime) -> bool:
    """Whether a late trade changes the minute bar after it was streamed (one in four)."""
    digest = hashlib.blake2b(f"{seed}|{symbol}|{ts.isoformat()}".encode(), digest_size=1)
    return digest.digest()[0] % 4 == 0


@dataclass(slots=True)
class _Correction:
    due: datetime
    candle: Candle


@dataclass(slots=True)
class _Channels:
    bars: set[str] = field(default_factory=set)
    updated: set[str] = field(default_factory=set)
    others: dict[str, set[str]] = field(default_factory=dict)  # trades, quotes, ...: no data

    def as_lists(self) -> dict[str, list[str]]:
        """The subscription as the stream reports it, each channel's symbols sorted."""
        lists = {name: sorted(symbols) for name, symbols in self.others.items()}
        return {**lists, "bars": sorted(self.bars), "updatedBars": sorted(self.updated)}


class BarStream:
    """One stream connection: auth and (un)subscribe in, bars out."""

    def __init__(self, ws: web.WebSocketResponse, ctx: SimContext, owner: Plan, feed: str) -> None:
        self._ws = ws
        self._ctx = ctx
        self._owner = owner
        self.feed = feed
        self.key: str | None = None  # the authenticated key
        self._channels = _Channels()
        self._pushed = _MINUTE.floor(ctx.clock())  # minutes before this were pushed
        self._corrections: list[_Correction] = []

    async def run(self) -> None:
        """Serve the connection until the client leaves or is sent away."""
        await self._send(wire.CONNECTED)
        async with asyncio.TaskGroup() as tasks:
            pusher = tasks.create_task(self._push())
            await self._read()
            pusher.cancel()

    async def _send(self, messages: list[dict[str, Any]]) -> bool:
        return await send_json(self._ws, messages)

    async def fault(self, code: int, *, close: bool) -> None:
        """Send stream error `code`, then close the connection if `close`."""
        await self._send(wire.stream_error(code))
        if close:
            await self._ws.close()

    async def _read(self) -> None:
        try:
            first = await self._ws.receive(timeout=AUTH_TIMEOUT_S)
        except TimeoutError:
            await self._send(wire.stream_error(404))
            await self._ws.close()
            return
        if first.type != WSMsgType.TEXT:
            return
        await self._answer(first.data)
        async for msg in self._ws:
            if msg.type == WSMsgType.TEXT:
                await self._answer(msg.data)

    async def _answer(self, text: str) -> None:
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        action = message.get("action") if isinstance(message, dict) else None
        if action == "auth":
            await self._auth(message)
        elif action in ("subscribe", "unsubscribe") and isinstance(message, dict):
            if self.key is None:
                await self._send(wire.stream_error(401))
            elif (refused := self._subscribe(message, action == "subscribe")) is not None:
                await self._send(wire.stream_error(refused))
            else:
                await self._send(wire.subscription(self._channels.as_lists()))
        else:
            await self._send(wire.stream_error(400))

    async def _auth(self, message: dict[str, Any]) -> None:
        if self.key is not None:
            await self._send(wire.stream_error(403))
        elif message.get("key") != wire.SIM_KEY or message.get("secret") != wire.SIM_SECRET:
            await self._send(wire.stream_error(402))
        elif self.feed not in self._owner.feeds:
            await self._send(wire.stream_error(409))  # not logged in; the connection stays
        elif (wire.SIM_KEY, self.feed) in self._owner.authenticated:
            await self._send(wire.stream_error(406))  # one connection per key and endpoint
            await self._ws.close()
        else:
            self.key = wire.SIM_KEY
            self._owner.authenticated.add((wire.SIM_KEY, self.feed))
            await self._send(wire.AUTHENTICATED)

    def _subscribe(self, message: dict[str, Any], add: bool) -> int | None:
        """Apply an (un)subscribe; else the error code: 400 when it is not the
        documented shape, 410 for another stream's channel, 405 past the limit."""
        if any(name in message for name in wire.OTHER_STREAMS_CHANNELS):
            return 410
        changes = {name: message[name] for name in wire.CHANNELS if name in message}
        if not changes or not all(
            isinstance(symbols, list) and all(isinstance(s, str) and s for s in symbols)
            for symbols in changes.values()
        ):
            return 400
        limit = self._owner.symbol_limit
        if add and limit is not None:
            channels = self._channels
            held = set().union(channels.bars, channels.updated, *channels.others.values())
            wanted = held.union(*changes.values()) - {"*"}
            if len(wanted) > limit:
                return 405  # "your symbol subscriptions are the same as they were before"
        channels = self._channels
        for name, symbols in changes.items():
            target = {"bars": channels.bars, "updatedBars": channels.updated}.get(name)
            if target is None:
                target = channels.others.setdefault(name, set())
            if add:
                target.update(symbols)
            else:
                target.difference_update(symbols)
        return None

    def _symbols(self, subscribed: set[str]) -> list[str]:
        return self._ctx.truth.symbols if "*" in subscribed else sorted(subscribed)

    def _closed_bars(self, now: datetime) -> list[dict[str, Any]]:
        """The "b" messages of the minutes closed since the last push; queue corrections."""
        truth, seed = self._ctx.truth, self._ctx.scenario.seed
        closed_before = _MINUTE.floor(now)
        messages = []
        for minute in _MINUTE.bars(self._pushed, closed_before):
            for symbol in self._symbols(self._channels.bars):
                series = SeriesKey(SIM_VENUE, symbol, "1m")
                if not (truth.exists(series, minute) and truth.traded(series, minute)):
                    continue  # no trade, no bar
                final = truth.bar(series, minute)
                first = final
                if corrected(seed, symbol, minute):
                    # The late trade is missing from the first bar: less volume.
                    first = dataclasses.replace(final, volume=round(final.volume * 0.9, 8))
                    due = now + timedelta(seconds=self._owner.correction_delay_s)
                    self._corrections.append(_Correction(due, final))
                messages.append(wire.stream_bar("b", first))
        self._pushed = max(self._pushed, closed_before)
        return messages

    def _due_corrections(self, now: datetime) -> list[dict[str, Any]]:
        due = [c for c in self._corrections if c.due <= now]
        self._corrections = [c for c in self._corrections if c.due > now]
        updated = self._symbols(self._channels.updated)
        return [wire.stream_bar("u", c.candle) for c in due if c.candle.series.symbol in updated]

    async def _push(self) -> None:
        while not self._ws.closed:
            now = self._ctx.clock()
            wake = min([_MINUTE.next(now), *(c.due for c in self._corrections)])
            await asyncio.sleep(max(0.0, (wake - now).total_seconds()) + _PUSH_LAG_S)
            now = self._ctx.clock()
            if self.key is None:
                self._pushed = _MINUTE.floor(now)  # nothing is owed before auth
                continue
            messages = self._closed_bars(now) + self._due_corrections(now)
            if messages and await self._send(messages):
                self._ctx.counters.frames_sent += 1
                self._ctx.counters.corrected_bars_sent += sum(m["T"] == "u" for m in messages)
