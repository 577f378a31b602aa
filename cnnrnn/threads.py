"""CPU threads: how many a run computes with, and the CPU it runs on.

`threads = -1` (the default) picks them when a run starts: the CPUs this process may use less
the ones other jobs keep busy (`auto_threads`). The count chosen is recorded in the run
(environment.json and every checkpoint), and a resume takes it again, so a resumed run repeats
the straight one bit for bit (another count changes the order of sums). `threads = N` pins N,
so two runs started on the same CPU model repeat each other whatever else runs beside them;
`threads = 0` leaves torch's default (every core, however busy).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

AUTO = -1  # the config value that picks the count at the start


def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo (else what `platform` knows): a seeded run's
    last digits, and every speed, depend on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def busy_cpus() -> int:
    """How many CPUs other processes keep busy now: the runnable tasks the kernel counts beside
    this one (/proc/loadavg), or the 1-minute load average where that is all there is."""
    try:
        fields = Path("/proc/loadavg").read_text().split()
        return max(0, int(fields[3].split("/")[0]) - 1)  # minus this process
    except (OSError, IndexError, ValueError):
        pass
    try:
        return round(os.getloadavg()[0])
    except (OSError, AttributeError):
        return 0


def auto_threads(shared: bool = True) -> int:
    """`threads = -1`: the CPUs this process may use less the busy ones, at least 1. Beside
    another busy job on 2 cores that is 1 thread, where torch's default of 2 makes every step
    wait for the core the other job holds (docs/results-archive.md measures it). Under torchrun the
    ranks on this machine (LOCAL_WORLD_SIZE) share its CPUs: each takes at most its share,
    since they start together and cannot see each other's load yet; `shared=False` for work
    one rank does while the others wait (an encoder's pretraining on rank 0)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    ranks = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1"))) if shared else 1
    return max(1, min(cpus // ranks, cpus - busy_cpus()))


def resolve_threads(setting: int, shared: bool = True, recorded: int | None = None) -> int:
    """The thread count a run computes with for the config value `setting`: N > 0 pins N;
    -1 (auto) is `recorded`, the count a resumed run chose when it started, else
    `auto_threads(shared)`; 0 is torch's current count (its default)."""
    if setting == AUTO:
        return recorded if recorded else auto_threads(shared)
    return setting or torch.get_num_threads()


def use_threads(setting: int, shared: bool = True, recorded: int | None = None) -> int:
    """Set torch's CPU threads as `resolve_threads` says; returns the count."""
    n = resolve_threads(setting, shared, recorded)
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n
