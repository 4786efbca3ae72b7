"""Fault triggers at run time: counters and seeded dice, so a scenario replays the same."""

from __future__ import annotations

import asyncio
import random

from aiohttp import web

from candled_sim.scenario import Trigger


def fires(trigger: Trigger, event: int, rng: random.Random) -> bool:
    """Whether the fault fires on the `event`th event (counted from 1)."""
    if trigger.every:
        return event % trigger.every == 0
    return trigger.probability > 0 and rng.random() < trigger.probability


class Dice:
    """Decides, event by event, whether a fault fires."""

    def __init__(self, trigger: Trigger, rng: random.Random) -> None:
        self._trigger = trigger
        self._rng = rng
        self._events = 0

    def roll(self) -> bool:
        self._events += 1
        return fires(self._trigger, self._events, self._rng)


class Turns:
    """A `Dice` that also says which firing this is: faults that vary by turn."""

    def __init__(self, dice: Dice) -> None:
        self._dice = dice
        self._fired = 0

    def roll(self) -> int | None:
        """None, or the number of earlier firings."""
        if not self._dice.roll():
            return None
        self._fired += 1
        return self._fired - 1


class Burst:
    """A `Dice` whose firing lasts `length` consecutive events."""

    def __init__(self, dice: Dice, length: int) -> None:
        self._dice = dice
        self._length = length
        self._left = 0

    def roll(self) -> bool:
        if self._left == 0 and self._dice.roll():
            self._left = self._length
        if self._left:
            self._left -= 1
            return True
        return False


async def client_gone(request: web.Request) -> None:
    """Send nothing until the client closes the connection (a venue that never answers)."""
    # Polled: aiohttp has no event for a peer's hang-up.
    while (t := request.transport) is not None and not t.is_closing():  # noqa: ASYNC110
        await asyncio.sleep(0.2)
