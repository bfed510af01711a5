"""Disk space for a run directory: checked before a stage writes its large outputs, and a full disk
met anyway (the estimate low, or something else filling the disk) told in one line.

What a stage may write is estimated in cai_ray/stages/resources.py (disk_need). CAI_RAY_DISK_CHECK=0
skips the check (not the full-disk message).

    need, what = resources.disk_need(job, stage, model_bytes(base))
    check_free(run_dir, need, stage, why)     raises DiskFull before the stage starts
    full = disk_full(exc, run_dir)            a stage's error that a full disk explains, or None
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from cai_ray.errors import InputError

FULL_BELOW = 64 * 2**20
"""Free space under which a failed stage is taken to have failed for the disk."""

SIGNS = ("No space left on device", "basic_ios::clear", "iostream error", "Disk quota exceeded",
         "ENOSPC", "file write failed")
"""How a full disk reads in errors that crossed a process boundary (Ray Train workers, torch's
C++ writers): the errno is gone, the text is not."""


class DiskFull(InputError):
    """The run directory's file system has (or had) too little space: one line, and --resume."""


def model_bytes(folder: str | Path) -> int:
    """The size of a model folder's weights (0 for a hub id or a folder without them)."""
    p = Path(folder)
    if not p.is_dir():
        return 0
    return sum(f.stat().st_size for f in p.iterdir()
               if f.suffix in (".safetensors", ".bin") and f.is_file())


def free_bytes(path: str | Path) -> tuple[int, Path]:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    p = Path(path).resolve()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free, p


def check_free(run_dir: str | Path, need: int, stage: str, what: str) -> None:
    """DiskFull when the run directory's file system has less than `need` bytes free."""
    if os.environ.get("CAI_RAY_DISK_CHECK", "1") == "0":
        return
    free, _ = free_bytes(run_dir)
    if free < need:
        raise DiskFull(f"--run-dir {run_dir}: {mb(free)} free on its file system, and stage "
                       f"{stage} writes about {mb(need)} ({what}); free space (or lower "
                       f"{stage}.keep_checkpoints), then run again with --resume "
                       f"(CAI_RAY_DISK_CHECK=0 skips this check)")


def disk_full(exc: BaseException, run_dir: str | Path, stage: str) -> DiskFull | None:
    """The one-line DiskFull for a stage that failed because the disk filled, else None."""
    seen, e, by_errno = set(), exc, False
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            by_errno = True
        e = e.__cause__ or e.__context__
    free, _ = free_bytes(run_dir)
    if not (by_errno or any(s in str(exc) for s in SIGNS) or free < FULL_BELOW):
        return None
    return DiskFull(f"--run-dir {run_dir}: the disk filled while stage {stage} was writing "
                    f"({mb(free)} free now); free space, then run again with --resume (what "
                    f"the stage finished is kept)")


def mb(n: int) -> str:
    return f"{n / 2**30:.1f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"
