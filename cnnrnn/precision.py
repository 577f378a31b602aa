"""Device and numeric precision: where the run computes and in which float format."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path

import torch

from cnnrnn.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; asking for an absent device is an error."""
    if name not in DEVICES:
        raise ConfigError(f"unknown device {name!r}; choose one of {', '.join(DEVICES)}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but no CUDA GPU is visible; use --device cpu")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available; use --device cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Mixed precision for the forward pass; fp32 is a no-op.

    Weights and optimizer state stay fp32; matmuls and convolutions run in bf16/fp16.
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "fp16" and device.type == "cpu":
        raise ConfigError("fp16 is for GPUs; on a CPU use --precision bf16 (or fp32)")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


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
