"""Supervision of the worker's long-running tasks: nothing ends silently.

Every long-running task of the worker (checkpointer, health monitor, policy watch, ...) runs under
:meth:`Supervisor.run`. When it ends unexpectedly (an exception, an unexpected return, or a
cancellation while the worker is not stopping) the supervisor logs it at ERROR with the cause,
counts it in ``masb_task_restarts_total{task}``, and starts it again after a capped exponential
backoff with jitter. If a task keeps failing while the broker is reachable (``give_up_after``
failures in a row, none of which ran for ``healthy_after`` seconds), the supervisor stops the
worker with exit code 1 so that the process supervisor (systemd, Kubernetes) restarts it.
Failures while the broker is unreachable do not count towards giving up: waiting is the cure.

The faust agents (router, receipts) are restarted by faust's own agent supervisor; they report
their liveness here through :meth:`Supervisor.beat`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError
from prometheus_client import Counter, Gauge

from streams.errors import EXIT_FAILED, MasbError

log = logging.getLogger("masb.supervisor")

TASK_UP = Gauge("masb_task_up", "1 while a supervised worker task runs, 0 while it waits to be restarted",
                ["task"])
TASK_RESTARTS = Counter("masb_task_restarts_total", "Unexpected ends of a worker task (each is restarted)",
                        ["task"])


def backoff(attempt: int, initial: float = 1.0, cap: float = 30.0) -> float:
    """Capped exponential backoff with +-20 % jitter: 1, 2, 4, ... cap seconds."""
    return min(cap, initial * 2 ** attempt) * random.uniform(0.8, 1.2)


@dataclass
class TaskState:
    name: str
    up: bool = False
    restarts: int = 0
    failures_in_a_row: int = 0
    last_error: str | None = None  # the exception class (never its message: it could quote input)
    since: float = field(default_factory=time.time)  # when `up` last changed (unix time)
    doing: str | None = None     # what the task does now, in MASB's own words (no input values)
    doing_since: float = field(default_factory=time.monotonic)

    def as_json(self) -> dict:
        return {"up": self.up, "restarts": self.restarts, "last_error": self.last_error,
                "since": round(self.since, 3), "doing": self.doing,
                "doing_for_seconds": round(time.monotonic() - self.doing_since, 1)}


class Supervisor:
    def __init__(self, app, *, broker_up: Callable[[], bool] = lambda: True, backoff_initial: float = 1.0,
                 backoff_cap: float = 30.0, give_up_after: int = 8, healthy_after: float = 60.0) -> None:
        self.app = app
        self.broker_up = broker_up
        self.backoff_initial = backoff_initial
        self.backoff_cap = backoff_cap
        self.give_up_after = give_up_after
        self.healthy_after = healthy_after
        self.tasks: dict[str, TaskState] = {}
        self.exit_code: int | None = None  # set when the supervisor stops the worker
        self._running: dict[str, asyncio.Task] = {}

    def state(self, name: str) -> TaskState:
        if name not in self.tasks:
            self.tasks[name] = TaskState(name)
            TASK_UP.labels(name).set(0)
        return self.tasks[name]

    def _set_up(self, state: TaskState, up: bool) -> None:
        if state.up != up:
            state.up, state.since = up, time.time()
        TASK_UP.labels(state.name).set(1 if up else 0)

    def doing(self, name: str, what: str) -> None:
        """A task says what it does now ("waiting for records", "sending 12 records"): /health shows
        it with how long it has been at it, so a task that hangs shows where."""
        state = self.state(name)
        if state.doing != what:
            state.doing, state.doing_since = what, time.monotonic()

    def beat(self, name: str) -> None:
        """A task supervised elsewhere (a faust agent) says it is running."""
        self._set_up(self.state(name), True)

    def ended(self, name: str, exc: BaseException | None) -> None:
        """A task supervised elsewhere (a faust agent) ended unexpectedly; faust restarts it."""
        state = self.state(name)
        self._record_failure(state, exc, ran_for=0.0)

    def watch_agent(self, agent, name: str) -> None:
        """Count a faust agent's crashes here (faust's own agent supervisor restarts it)."""
        faust_handler = agent._on_error  # the app's handler: it commits what was acknowledged

        async def on_error(failed_agent, exc: BaseException) -> None:
            self.ended(name, exc)
            if faust_handler is not None:
                await faust_handler(failed_agent, exc)

        agent._on_error = on_error
        self.state(name)

    def run(self, name: str, task: Callable[[], Awaitable[None]]) -> None:
        """Start ``task`` with the app, and again whenever it ends unexpectedly."""
        self.state(name)
        self.app.task(self._supervise_factory(name, task))

    def _supervise_factory(self, name: str, task: Callable[[], Awaitable[None]]):
        async def supervise() -> None:
            await self.supervise(name, task)
        supervise.__name__ = supervise.__qualname__ = f"supervised_{name.replace('-', '_')}"
        return supervise

    def _stopping(self) -> bool:
        return bool(self.app.should_stop) or self.exit_code is not None

    async def supervise(self, name: str, task: Callable[[], Awaitable[None]]) -> None:
        state = self.state(name)
        attempt = 0
        while not self._stopping():
            started = time.monotonic()
            self._set_up(state, True)
            runner = asyncio.ensure_future(task())
            self._running[name] = runner
            error: BaseException | None = None
            try:
                await runner
                error = RuntimeError(f"task {name} returned")  # long-running tasks never return
            except asyncio.CancelledError as exc:
                if self._stopping() or not runner.cancelled():
                    runner.cancel()
                    if self._stopping():
                        raise
                error = exc
            except Exception as exc:  # noqa: BLE001 - the point of supervision
                error = exc
            finally:
                self._running.pop(name, None)
                self._set_up(state, False)
            if self._stopping():
                return
            ran_for = time.monotonic() - started
            if ran_for >= self.healthy_after:
                attempt = 0
            delay = backoff(attempt, self.backoff_initial, self.backoff_cap)
            attempt += 1
            broker_was_up = self.broker_up()
            self._record_failure(state, error, ran_for, delay)
            if state.failures_in_a_row >= self.give_up_after:
                self.give_up(name)
                return
            await self._pause(delay, broker_was_up)

    async def _pause(self, delay: float, broker_was_up: bool) -> None:
        """Wait ``delay`` seconds before a restart, or less if the broker, away at the failure, is back."""
        until = time.monotonic() + delay
        while (remaining := until - time.monotonic()) > 0:
            await asyncio.sleep(min(remaining, 0.5))
            if not broker_was_up and self.broker_up():
                return

    def _record_failure(self, state: TaskState, exc: BaseException | None, ran_for: float,
                        restart_in: float | None = None) -> None:
        cause = type(exc).__name__ if exc is not None else "unknown"
        state.last_error = cause
        state.restarts += 1
        TASK_RESTARTS.labels(state.name).inc()
        if ran_for >= self.healthy_after:
            state.failures_in_a_row = 0
        broker_up = self.broker_up()
        if broker_up:  # failures while the broker is away are the outage's, not the task's
            state.failures_in_a_row += 1
        # A traceback only for what may be a bug; an outage's failures are one line each.
        expected = not broker_up or isinstance(exc, (MasbError, KafkaError, asyncio.CancelledError))
        then = f"; restarting in {restart_in:.1f}s" if restart_in is not None else ""
        log.error("task %s ended unexpectedly after %.1fs: %s%s", state.name, ran_for, cause, then,
                  exc_info=exc if isinstance(exc, Exception) and not expected else None)

    def give_up(self, name: str, why: str | None = None) -> None:
        """Stop the worker with a non-zero exit code: its process supervisor will restart it."""
        if self.exit_code is not None:
            return
        log.critical("task %s %s; stopping the worker (exit code %d) so that its process supervisor restarts it",
                     name, why or f"failed {self.give_up_after} times in a row", EXIT_FAILED)
        self.exit_code = EXIT_FAILED
        os.kill(os.getpid(), signal.SIGTERM)

    def cancel(self, name: str) -> bool:
        """Cancel a running supervised task from inside (fault injection for tests)."""
        runner = self._running.get(name)
        if runner is None or runner.done():
            return False
        runner.cancel()
        return True
