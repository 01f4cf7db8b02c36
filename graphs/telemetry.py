"""Where a run's time goes: per node, how much was model forwards, brain waits and everything else.

The benchmark reads these figures; the loop itself never depends on them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class CounterSnapshot:
    """Cumulative counters of the models and brains at one instant."""

    model_seconds: float = 0.0
    clip_text_passes: int = 0


@dataclass
class NodeTiming:
    """One node execution."""

    node: str
    iteration: int
    wall_s: float
    model_s: float
    brain_wait_s: float
    clip_text_passes: int
    brain_calls: int = 0
    peak_concurrent_brain_calls: int = 0

    @property
    def overhead_s(self) -> float:
        """Wall time not spent in model forwards or waiting on brains."""
        return max(0.0, self.wall_s - self.model_s - self.brain_wait_s)


@dataclass
class BrainCallSpan:
    """When one brain call ran, to tell how many ran at once."""

    started: float
    finished: float


@dataclass
class LoopTelemetry:
    """Collects node timings and brain-call spans for one process."""

    timings: list[NodeTiming] = field(default_factory=list)
    brain_spans: list[BrainCallSpan] = field(default_factory=list)

    def add_brain_call(self, started_at: datetime | float, latency_s: float) -> None:
        started = started_at.timestamp() if isinstance(started_at, datetime) else float(started_at)
        self.brain_spans.append(BrainCallSpan(started, started + latency_s))

    @contextmanager
    def measure(self, node: str, iteration: int, snapshot) -> Iterator[None]:
        """Time a node; ``snapshot`` returns the current CounterSnapshot of models and brains."""
        before, started = snapshot(), time.time()
        start_clock = time.perf_counter()
        try:
            yield
        finally:
            wall = time.perf_counter() - start_clock
            after = snapshot()
            spans = [s for s in self.brain_spans if started <= s.started <= started + wall]
            self.timings.append(
                NodeTiming(
                    node=node,
                    iteration=iteration,
                    wall_s=wall,
                    model_s=after.model_seconds - before.model_seconds,
                    brain_wait_s=_union_length(spans),
                    clip_text_passes=after.clip_text_passes - before.clip_text_passes,
                    brain_calls=len(spans),
                    peak_concurrent_brain_calls=_peak_overlap(spans),
                )
            )


def _peak_overlap(spans: list[BrainCallSpan]) -> int:
    events = sorted([(s.started, 1) for s in spans] + [(s.finished, -1) for s in spans])
    peak = running = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def _union_length(spans: list[BrainCallSpan]) -> float:
    """Seconds during which at least one brain call was in flight (concurrent waits count once)."""
    total, cursor = 0.0, float("-inf")
    for span in sorted(spans, key=lambda s: s.started):
        start = max(span.started, cursor)
        if span.finished > start:
            total += span.finished - start
            cursor = span.finished
    return total
