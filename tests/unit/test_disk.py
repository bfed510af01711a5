"""The run directory's disk: the space check and how a full disk is recognised in a stage's error
(on the real file system of tmp_path; the full-disk run: tests/integration/test_full_disk.py)."""

from __future__ import annotations

import errno

import pytest

from cai_ray.rundir import disk


def test_check_free_refuses_more_than_the_file_system_has_and_names_the_fix(tmp_path):
    free, _ = disk.free_bytes(tmp_path / "run" / "not-yet")  # nearest existing parent
    disk.check_free(tmp_path / "run", free // 2, "sft", "model x 5")
    with pytest.raises(disk.DiskFull) as e:
        disk.check_free(tmp_path / "run", free + 2**30, "sft", "model x 5")
    line = str(e.value)
    assert "\n" not in line and f"--run-dir {tmp_path / 'run'}:" in line
    assert "stage sft writes about" in line and "--resume" in line and "model x 5" in line


def test_the_check_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("CAI_RAY_DISK_CHECK", "0")
    disk.check_free(tmp_path, 2**62, "sft", "everything")


def test_a_full_disk_is_told_from_its_errno_or_its_text_and_other_errors_are_not(tmp_path):
    enospc = OSError(errno.ENOSPC, "No space left on device")
    assert isinstance(disk.disk_full(enospc, tmp_path, "rl"), disk.DiskFull)
    try:  # the errno two causes down, as a trainer's wrapped error carries it
        try:
            raise enospc
        except OSError as inner:
            raise RuntimeError("checkpoint failed") from inner
    except RuntimeError as outer:
        full = disk.disk_full(outer, tmp_path, "rl")
    assert full is not None and "stage rl" in str(full) and "--resume" in str(full)
    remote = RuntimeError("ray.exceptions.RayTaskError: basic_ios::clear: iostream error")
    assert disk.disk_full(remote, tmp_path, "sft") is not None  # errno lost across processes
    assert disk.disk_full(ValueError("shapes do not match"), tmp_path, "sft") is None
