"""Interleaved timing of step callables, with device sync; profiler tables.

Steps are run in turn (a, b, c, a, b, c, ...), so load from other processes slows every variant alike. On a CPU
the clock is the process's CPU time (`time.process_time`): with one thread it is the step's own compute, hardly
touched by other processes sharing the cores (their wall time is reported next to it). On CUDA it is wall time
between two `torch.cuda.synchronize` calls.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.profiler import ProfilerActivity, profile

Step = Callable[[], object]


def sync(device: torch.device) -> None:
    """Waits for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Seconds of one step callable: its first call (with any compile warm-up) and its timed repetitions."""

    first_s: float  # wall seconds of the first call: compilation (if compiled) + one step
    cpu: list[float] = field(default_factory=list)  # CPU seconds per timed call (CPU devices)
    wall: list[float] = field(default_factory=list)  # wall seconds per timed call

    @property
    def median(self) -> float:
        """The median of the clock (CPU seconds on a CPU, synchronised wall seconds on CUDA)."""
        return statistics.median(self.cpu or self.wall)

    @property
    def median_wall(self) -> float:
        return statistics.median(self.wall)

    @property
    def warmup_s(self) -> float:
        """First call minus a timed call: the compile warm-up (about 0 for an eager step)."""
        return max(0.0, self.first_s - self.median_wall)


def interleaved(steps: dict[str, Step], reps: int, device: torch.device, warmup: int = 1) -> dict[str, Timing]:
    """Times each step: `warmup` untimed calls (the first timed alone: its warm-up), then `reps` rounds of one call
    of every step in turn.

    Args:
        steps: name -> a callable running one step (state kept inside it).
        reps: timed calls per step (>= 1).
        device: where the steps compute (sync before and after every call).
        warmup: calls before timing (>= 1: the first call is never timed with the rest).
    """
    if reps < 1 or warmup < 1:
        raise ValueError(f"reps and warmup must be >= 1, got {reps} and {warmup}")
    cpu_clock = device.type == "cpu"
    out = {}
    for name, f in steps.items():
        sync(device)
        t0 = time.perf_counter()
        f()
        sync(device)
        out[name] = Timing(time.perf_counter() - t0)
        for _ in range(warmup - 1):
            f()
    for _ in range(reps):
        for name, f in steps.items():
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            f()
            sync(device)
            out[name].wall.append(time.perf_counter() - t0)
            if cpu_clock:
                out[name].cpu.append(time.process_time() - c0)
    return out


def top_ops(step: Step, runs: int = 2, rows: int = 12) -> tuple[list[tuple[str, float, float, int]], float]:
    """([(op, self CPU ms per step, % of self CPU total, calls per step)], self CPU ms per step in total)."""
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            step()
    events = list(prof.key_averages())
    total = sum(e.self_cpu_time_total for e in events)
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [
        (e.key, e.self_cpu_time_total / 1e3 / runs, 100 * e.self_cpu_time_total / total, e.count // runs)
        for e in events[:rows]
    ], total / 1e3 / runs


def ops_table(title: str, ops: list[tuple[str, float, float, int]], total: float) -> str:
    lines = [
        f"**{title}** (self CPU {total:.1f} ms per step under the profiler)",
        "",
        "| op | self CPU ms / step | % | calls / step |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| `{k[:60]}` | {ms:.2f} | {pct:.1f} | {n} |" for k, ms, pct, n in ops]
    return "\n".join(lines)
