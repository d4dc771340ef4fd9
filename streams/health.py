"""The worker's health: named checks run in the background, served on /health and /metrics.

Each check is a name and an async function that returns a `CheckResult`; the monitor
runs them all every interval, each within a timeout, and keeps the latest results.
/health fails (503) when any check fails, when no round has finished yet, or when the
last round is too old (the checks themselves hang). Adding a reason is adding a check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# A round older than this many intervals means the checks themselves are stuck.
STALE_ROUNDS = 3


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict: `reason` says what is wrong (one line) when not ok."""

    ok: bool
    reason: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, **({"reason": self.reason} if self.reason else {}),
                **self.detail}


Check = Callable[[], Awaitable[CheckResult]]


class HealthMonitor:
    """Runs named checks every `interval` seconds and reports the latest round."""

    def __init__(self, checks: Sequence[tuple[str, Check]], *, interval: float,
                 timeout: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.checks = list(checks)
        self.interval = interval
        self.timeout = timeout
        self.clock = clock
        self.results: dict[str, CheckResult] = {}
        self.checked_at: float | None = None
        self._stopping = asyncio.Event()

    async def run_once(self) -> None:
        results = await asyncio.gather(*(self._run(name, check) for name, check in self.checks))
        self.results = dict(zip((name for name, _ in self.checks), results, strict=True))
        self.checked_at = self.clock()

    async def _run(self, name: str, check: Check) -> CheckResult:
        try:
            return await asyncio.wait_for(check(), self.timeout)
        except TimeoutError:
            return CheckResult(False, f"{name}: no answer within {self.timeout:g}s")
        except Exception as exc:  # a check that fails to run is a failed check
            log.warning("health check %s failed to run: %s: %s", name, type(exc).__name__, exc)
            return CheckResult(False, f"{name}: {type(exc).__name__}: {exc}")

    async def run(self) -> None:
        """Check every interval until stop()."""
        while not self._stopping.is_set():
            await self.run_once()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.interval)

    def stop(self) -> None:
        self._stopping.set()

    def report(self) -> tuple[bool, dict[str, Any]]:
        """Whether the worker is healthy, and the JSON body of /health."""
        reasons = [r.reason or name for name, r in self.results.items() if not r.ok]
        if self.checked_at is None:
            reasons.append("the health checks have not run yet")
        elif self.clock() - self.checked_at > STALE_ROUNDS * max(self.interval, self.timeout):
            reasons.append(f"the health checks last finished {self.clock() - self.checked_at:.0f}s "
                           "ago: the worker's event loop is blocked?")
        body: dict[str, Any] = {
            "ok": not reasons,
            "checks": {name: result.as_json() for name, result in self.results.items()},
        }
        if reasons:
            body["reasons"] = reasons
        return not reasons, body


# ---- consumer groups -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StuckPartition:
    topic: str
    partition: int
    committed: int
    lag: int
    seconds: float  # how long the committed offset has not moved


@dataclass(frozen=True, slots=True)
class GroupState:
    lag: int
    stuck: tuple[StuckPartition, ...]


class GroupProgress:
    """Whether consumer groups move: per group and partition, the committed offset and
    since when it has stood still while records wait behind it."""

    def __init__(self, stuck_after: float) -> None:
        self.stuck_after = stuck_after
        self._since: dict[tuple[str, str, int], tuple[int, float]] = {}

    def observe(self, group: str, positions: Mapping[tuple[str, int], tuple[int, int]],
                now: float) -> GroupState:
        """`positions`: (topic, partition) -> (committed offset, end offset)."""
        total = 0
        stuck: list[StuckPartition] = []
        for (topic, partition), (committed, end) in sorted(positions.items()):
            lag = max(0, end - committed)
            total += lag
            key = (group, topic, partition)
            if lag == 0:
                self._since.pop(key, None)
                continue
            seen, since = self._since.get(key, (committed, now))
            if seen != committed:
                since = now  # it moved: progress, however slow
            self._since[key] = (committed, since)
            if now - since >= self.stuck_after:
                stuck.append(StuckPartition(topic, partition, committed, lag, now - since))
        return GroupState(total, tuple(stuck))


def groups_result(states: Mapping[str, GroupState]) -> CheckResult:
    """The consumer-groups check's verdict from each group's state."""
    detail = {"lag": {group: state.lag for group, state in states.items()}}
    stuck = [(group, p) for group, state in states.items() for p in state.stuck]
    if not stuck:
        return CheckResult(True, detail=detail)
    group, first = stuck[0]
    more = f" (and {len(stuck) - 1} more partitions)" if len(stuck) > 1 else ""
    reason = (f"consumer group {group} is stuck: {first.lag} records wait on "
              f"{first.topic}[{first.partition}] and its committed offset {first.committed} "
              f"has not moved for {first.seconds:.0f}s{more}")
    return CheckResult(False, reason, {
        **detail,
        "stuck": [{"group": g, "topic": p.topic, "partition": p.partition,
                   "committed": p.committed, "lag": p.lag, "seconds": round(p.seconds, 1)}
                  for g, p in stuck],
    })


# ---- the worker's checks ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ConsumerGroup:
    """A consumer group this worker runs and the topics it reads."""

    group_id: str
    topics: tuple[str, ...]


def worker_checks(
    *, warehouse: Callable[[], Any], ping: Callable[[Any], Awaitable[None]],
    kafka: Any, bootstrap: str, groups: Sequence[ConsumerGroup], progress: GroupProgress,
    clock: Callable[[], float] = time.monotonic,
) -> list[tuple[str, Check]]:
    """The checks of a worker: its warehouse answers, its broker answers, its consumer
    groups move. `warehouse()` is the open warehouse or None while it opens; `ping`
    asks it a trivial query; `kafka` has OffsetProbe's brokers() and positions()."""

    async def check_warehouse() -> CheckResult:
        opened = warehouse()
        if opened is None:
            return CheckResult(False, "warehouse: still opening (connecting and migrating)")
        try:
            await ping(opened)
        except Exception as exc:  # whatever the engine raises, it does not answer
            return CheckResult(False, f"warehouse: does not answer ({exc})")
        return CheckResult(True)

    async def check_broker() -> CheckResult:
        try:
            brokers = await kafka.brokers()
        except Exception as exc:  # connection refused, timeout, ...: it does not answer
            return CheckResult(False, f"broker: Kafka at {bootstrap} does not answer "
                                      f"({type(exc).__name__})")
        return CheckResult(True, detail={"brokers": brokers})

    async def check_groups() -> CheckResult:
        states: dict[str, GroupState] = {}
        try:
            for group in groups:
                positions = await kafka.positions(group.group_id, group.topics)
                states[group.group_id] = progress.observe(
                    group.group_id, {(tp.topic, tp.partition): v for tp, v in positions.items()},
                    clock())
        except Exception as exc:  # the broker check says why, if it is the broker
            return CheckResult(False, f"consumer groups: cannot read their offsets "
                                      f"({type(exc).__name__})")
        return groups_result(states)

    return [("warehouse", check_warehouse), ("broker", check_broker),
            ("consumer_groups", check_groups)]
