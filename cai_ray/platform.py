"""What this machine has: a CUDA GPU or not, cores, memory. Decides the CPU or GPU code paths."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from functools import lru_cache


@lru_cache(maxsize=1)
def has_cuda() -> bool:
    if os.environ.get("CAI_RAY_FORCE_CPU") == "1":
        return False
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def num_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def core_ranges(n_actors: int, cores: int | None = None) -> list[str]:
    """Split the machine's cores into n contiguous ranges ('0-1', '2-3'); actors beyond the core
    count share cores round-robin."""
    cores = cores or num_cores()
    per = max(1, cores // max(1, n_actors))
    out = []
    for i in range(n_actors):
        start = (i * per) % cores
        end = min(start + per, cores) - 1
        out.append(f"{start}-{end}" if end > start else str(start))
    return out


def peak_rss_mb() -> float:
    """Peak resident memory of this process (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb(pid: int | None = None) -> float:
    """Resident memory of a process and its children (MiB), from /proc."""
    pid = pid or os.getpid()
    total = 0.0
    for p in [pid, *_children(pid)]:
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def _children(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                kids = [int(x) for x in fh.read().split()]
        except OSError:
            kids = []
        out += kids
        todo += kids
    return out
