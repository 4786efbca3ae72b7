"""Fault triggers at run time: counters and seeded dice, so a scenario replays the same."""

from __future__ import annotations

import random

from daemon.sim.scenario import Trigger


class Dice:
    """Decides, event by event, whether a fault fires."""

    def __init__(self, trigger: Trigger, rng: random.Random) -> None:
        self._trigger = trigger
        self._rng = rng
        self._events = 0

    def roll(self) -> bool:
        self._events += 1
        if self._trigger.every:
            return self._events % self._trigger.every == 0
        return self._trigger.probability > 0 and self._rng.random() < self._trigger.probability


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
