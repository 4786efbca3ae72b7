"""Own every long-lived component and restart the ones that crash.

Each component runs in a task of one `asyncio.TaskGroup`. A crash is logged
and the component restarts after a capped, growing delay; the others go on.
A component that crashed `crash_loop_count` times within `crash_loop_window_s`
is flagged as crash-looping (visible in /health) but keeps being retried.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import StrEnum

from candled import logs

log = logs.get("candled.supervisor")
Factory = Callable[[], Awaitable[None]]


class ComponentState(StrEnum):
    """Where a supervised component is in its life (`/health` shows a venue's)."""

    STARTING = "starting"  # registered, its task not begun yet
    RUNNING = "running"
    RESTARTING = "restarting"  # crashed; waiting out the backoff before the next run
    STOPPED = "stopped"  # cancelled by `stop`
    DONE = "done"  # returned on its own


@dataclass
class Component:
    """One supervised task and its record: state, restarts, last error, recent crashes."""

    name: str
    state: ComponentState = ComponentState.STARTING
    restarts: int = 0
    last_error: str | None = None
    crashes: deque[float] = field(default_factory=lambda: deque(maxlen=16))
    task: asyncio.Task[None] | None = None

    def crash_looping(self, window_s: float, count: int) -> bool:
        """Whether it crashed `count` times within the last `window_s` seconds."""
        now = time.monotonic()
        return sum(1 for t in self.crashes if now - t < window_s) >= count


class Supervisor:
    """Runs the daemon's components and restarts a crashed one without the others noticing."""

    def __init__(
        self,
        tg: asyncio.TaskGroup,
        *,
        backoff_base_s: float = 1.0,
        backoff_cap_s: float = 60.0,
        crash_loop_window_s: float = 300.0,
        crash_loop_count: int = 5,
    ) -> None:
        self._tg = tg
        self.components: dict[str, Component] = {}
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.crash_loop_window_s = crash_loop_window_s
        self.crash_loop_count = crash_loop_count

    def start(self, name: str, factory: Factory) -> Component:
        """Run `factory()` as component `name`, restarted whenever it crashes."""
        if name in self.components and self.components[name].state != ComponentState.STOPPED:
            raise ValueError(f"component {name} is already running")
        component = Component(name)
        self.components[name] = component
        component.task = self._tg.create_task(self._supervise(component, factory), name=name)
        return component

    async def stop(self, name: str) -> None:
        """Cancel a component and wait until it has finished."""
        component = self.components.pop(name, None)
        if component is None or component.task is None:
            return
        component.task.cancel()
        await asyncio.wait([component.task])
        component.state = ComponentState.STOPPED

    async def stop_all(self) -> None:
        """Stop every component, one after the other."""
        for name in list(self.components):
            await self.stop(name)

    def crash_looping(self) -> list[str]:
        """The components crashing over and over, for `/health`."""
        return [
            c.name
            for c in self.components.values()
            if c.crash_looping(self.crash_loop_window_s, self.crash_loop_count)
        ]

    async def _supervise(self, component: Component, factory: Factory) -> None:
        failures = 0
        while True:
            component.state = ComponentState.RUNNING
            started = time.monotonic()
            try:
                await factory()
            except Exception as e:  # a crash: restart, never take the others down
                component.last_error = repr(e)
                component.crashes.append(time.monotonic())
                component.restarts += 1
                # A run that lasted a while was healthy: start the backoff over.
                failures = 1 if time.monotonic() - started > self.backoff_cap_s else failures + 1
                delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (failures - 1))
                component.state = ComponentState.RESTARTING
                log.error(
                    "component crashed; restarting",
                    component=component.name, error=repr(e), restart_in_s=delay,
                    restarts=component.restarts, exc_info=True,
                    crash_looping=component.crash_looping(
                        self.crash_loop_window_s, self.crash_loop_count
                    ),
                )  # fmt: skip
                await asyncio.sleep(delay)
                continue
            component.state = ComponentState.DONE
            return
