"""The run directory: manifest, per-stage folders, the lock, and the size watch.

    RUN_DIR/manifest.json             job identity, config digest, per-stage status and timing
    RUN_DIR/<stage>/result.json       the stage's summary figures
    RUN_DIR/<stage>/<name>/           datasets (save_to_disk) and <name>.jsonl beside them
    RUN_DIR/<stage>/progress.jsonl    rows finished so far (resume after a crash or a kill)

    run = open_run_dir("runs/x")      # or s3://bucket/x: a local working copy (storage.py)
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.rundir.files import write_json_atomic

MANIFEST = "manifest.json"


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.remote = None  # storage.Remote when the run directory is a URI (this is its copy)
        self.uri: str | None = None

    # -- identity ------------------------------------------------------------------------------
    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    def manifest(self) -> dict:
        if not self.manifest_path.exists():
            return {}
        try:
            return json.loads(self.manifest_path.read_text())
        except json.JSONDecodeError:
            raise InputError(f"{self.manifest_path}: damaged manifest (invalid JSON); move the "
                             f"run directory aside or choose another --run-dir") from None

    def check_usable(self) -> None:
        """A folder this process can create or write: not a file, not under a read-only parent.
        Checked before anything is written or any actor starts."""
        if self.path.exists() and not self.path.is_dir():
            raise InputError(f"--run-dir {self.path}: a file, not a folder; choose a folder "
                             f"(it is created if missing)")
        existing = self.path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir():
            raise InputError(f"--run-dir {self.path}: {existing} is a file; choose a folder")
        if not os.access(existing, os.W_OK | os.X_OK):
            raise InputError(f"--run-dir {self.path}: {existing} is not writable by this user; "
                             f"choose a folder you can write")
        if (self.path / ".lock").exists() and not os.access(self.path / ".lock", os.W_OK):
            raise InputError(f"--run-dir {self.path}: its .lock is not writable by this user "
                             f"(another user's run?); choose another folder")

    def check_identity(self, job_identity: str, job_name: str, force: bool = False) -> None:
        """Refuse a run directory that another job (other model, constitution or prompts) wrote."""
        self.check_usable()
        m = self.manifest()
        if m and m.get("identity") != job_identity and not force:
            raise InputError(f"{self.path}: this run directory belongs to another job "
                             f"({m.get('name')!r}, identity {m.get('identity')}; this job "
                             f"{job_name!r}, identity {job_identity}); choose another --run-dir "
                             f"or pass --force to reuse it")

    def open(self, job_identity: str, job_name: str, config: dict,
             platform: dict | None = None) -> None:
        m = self.manifest() or {"created": time.time(), "stages": {}}
        m.update({"name": job_name, "identity": job_identity, "config": config,
                  "updated": time.time()})
        if platform:
            m["platform"] = platform
        write_json_atomic(self.manifest_path, m)

    # -- stages --------------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        d = self.path / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage_record(self, stage: str) -> dict:
        return self.manifest().get("stages", {}).get(stage, {})

    def is_complete(self, stage: str, digest: str) -> bool:
        rec = self.stage_record(stage)
        return (rec.get("status") == "complete" and rec.get("digest") == digest
                and (self.path / stage / "result.json").exists())

    def mark(self, stage: str, **fields) -> None:
        m = self.manifest()
        m.setdefault("stages", {}).setdefault(stage, {}).update(fields)
        m["updated"] = time.time()
        write_json_atomic(self.manifest_path, m)

    def write_result(self, stage: str, result: dict) -> None:
        write_json_atomic(self.stage_dir(stage) / "result.json", result)

    def result(self, stage: str) -> dict:
        p = self.path / stage / "result.json"
        return json.loads(p.read_text()) if p.exists() else {}


def tree_bytes(path: Path) -> int:
    """Bytes of the files under path (files vanishing mid-walk are skipped)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.lstat(os.path.join(root, f)).st_size
            except OSError:
                pass
    return total


class DiskWatch:
    """Samples the run directory's size every `every_s` seconds while a stage runs (a background
    thread): the peak catches checkpoints that live only until they are pruned.

        with DiskWatch(run_dir) as w: ...      w.peak_bytes
    """

    def __init__(self, path: Path, every_s: float = 5.0):
        import threading

        self.path, self.every_s = path, every_s
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="disk-watch")

    def _sample(self) -> None:
        self.peak_bytes = max(self.peak_bytes, tree_bytes(self.path))

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self) -> "DiskWatch":
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


class RunLock:
    """One cai-ray run per run directory at a time (an flock on RUN_DIR/.lock)."""

    def __init__(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        self.fh = open(path / ".lock", "w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{path}: another cai-ray run is using this run directory") from None

    def release(self) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def open_run_dir(spec: str) -> RunDir:
    """A local folder, or a URI (s3://...): then a local working copy with the remote's manifest
    (enough to plan and validate; the rest is pulled when the run starts)."""
    from cai_ray.rundir import storage

    if not storage.is_uri(spec):
        return RunDir(spec)
    remote = storage.Remote.open(spec)  # exit 2 when unreachable, before anything is written
    local = storage.local_copy(spec)
    local.mkdir(parents=True, exist_ok=True)
    remote.pull(local, only=["manifest.json"])
    run = RunDir(local)
    run.remote, run.uri = remote, spec
    return run
