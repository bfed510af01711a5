"""The run directory: manifest, per-stage folders, the lock, and the size watch.

    RUN_DIR/manifest.json             job identity, config digest, per-stage status and timing
    RUN_DIR/<stage>/result.json       the stage's summary figures
    RUN_DIR/<stage>/<name>/           datasets (save_to_disk) and <name>.jsonl beside them
    RUN_DIR/<stage>/progress.jsonl    rows finished so far (resume after a crash or a kill)

    run = open_run_dir("runs/x")      # or s3://bucket/x: a local working copy (storage.py)
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import time
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.rundir import readers
from cai_ray.rundir.files import write_json_atomic

log = logging.getLogger("cai_ray")

MANIFEST = "manifest.json"


SYSTEM_DIRS = ("/proc", "/sys", "/dev")
"""Kernel folders: nothing a run writes belongs there (writes fail, or worse, succeed)."""


def check_place(path: Path) -> None:
    """Refuse a run directory that is the root folder or inside a kernel folder, and a path
    with a name longer than the file system allows."""
    long = [part for part in path.parts if len(part.encode()) > 255]
    if long:
        raise InputError(f"--run-dir {str(path)[:80]}...: the name {long[0][:40]}... is over "
                         f"255 bytes, longer than the file system allows; shorten it")
    real = Path(os.path.realpath(path))
    if real == Path("/"):
        raise InputError(f"--run-dir {path}: the root folder; choose a folder of its own (for "
                         f"example runs/my-job)")
    for d in SYSTEM_DIRS:
        if (real == Path(d) or Path(d) in real.parents) and Path("/dev/shm") not in (
                real, *real.parents):  # /dev/shm is a tmpfs: memory, but storage
            raise InputError(f"--run-dir {path}: inside {d}, a kernel folder, not storage; "
                             f"choose a folder on a disk (for example runs/my-job)")


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
        """The manifest ({} when there is none yet); a damaged one is one InputError naming what
        is wrong and how to recover."""
        if not readers.exists(self.manifest_path):
            return {}
        try:
            m = readers.read_json(self.manifest_path, "manifest", "manifest")
        except InputError as exc:
            raise InputError(f"{exc}; {self._recover()}") from None
        problem = _manifest_problem(m)
        if problem:
            raise InputError(f"{self.manifest_path}: {problem}; {self._recover()}")
        return m

    def _recover(self) -> str:
        prev = self.manifest_path.with_name(MANIFEST + ".previous")
        if readers.exists(prev):
            return (f"restore the last good copy (cp {prev} {self.manifest_path}) or move the "
                    f"run directory aside")
        return "move the run directory aside or choose another --run-dir"

    def _write_manifest(self, m: dict) -> None:
        """The new manifest, the one it replaces kept as manifest.json.previous (a recovery
        point for a manifest damaged later)."""
        if readers.exists(self.manifest_path):
            prev = self.manifest_path.with_name(MANIFEST + ".previous")
            tmp = prev.with_name(f".{prev.name}.tmp{os.getpid()}")
            try:  # whole or not at all: a half-copied backup on a full disk would mislead
                shutil.copyfile(self.manifest_path, tmp)
                os.replace(tmp, prev)
            except OSError:
                tmp.unlink(missing_ok=True)
        write_json_atomic(self.manifest_path, m)

    def check_usable(self) -> None:
        """A folder this process can create or write: not a file, not under a read-only parent,
        not the root or a kernel folder (/proc, /sys, /dev). Checked before anything is written
        or any actor starts."""
        check_place(self.path)
        if readers.exists(self.path) and not readers.is_dir(self.path):
            raise InputError(f"--run-dir {self.path}: a file, not a folder; choose a folder "
                             f"(it is created if missing)")
        existing = self.path
        while not readers.exists(existing):
            existing = existing.parent
        if not readers.is_dir(existing):
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
            raise InputError(f"{self.manifest_path}: this run directory belongs to another job "
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
        self._write_manifest(m)

    # -- stages --------------------------------------------------------------------------------
    def stage_dir(self, stage: str) -> Path:
        d = self.path / stage
        d.mkdir(parents=True, exist_ok=True)
        return d

    def stage_record(self, stage: str) -> dict:
        return self.manifest().get("stages", {}).get(stage, {})

    def is_complete(self, stage: str, digest: str, outputs: tuple[str, ...] = ()) -> bool:
        """Complete under this digest, with a readable result.json and every declared output
        (paths under the run directory) present. A stage the manifest calls complete whose
        outputs are missing or unreadable is not, with a warning: it runs again."""
        rec = self.stage_record(stage)
        if rec.get("status") != "complete" or rec.get("digest") != digest:
            return False
        missing = [o for o in (f"{stage}/result.json", *outputs)
                   if not readers.exists(self.path / o)]
        if not missing:
            try:
                self.result(stage)
            except InputError as exc:
                missing = [f"{stage}/result.json ({str(exc).split(': ', 1)[-1]})"]
        if missing:
            log.warning("%s: marked complete in %s, but %s %s missing or unreadable; it runs "
                        "again", stage, self.manifest_path, ", ".join(missing),
                        "is" if len(missing) == 1 else "are")
            return False
        return True

    def mark(self, stage: str, **fields) -> None:
        self._update(lambda m: m.setdefault("stages", {}).setdefault(stage, {}).update(fields))

    def note(self, key: str, value) -> None:
        """A top-level field of the manifest (the trackers' run ids: `tracking`)."""
        self._update(lambda m: m.__setitem__(key, value))

    def note_entry(self, key: str, name: str, value) -> None:
        """One entry of a top-level mapping of the manifest (the judge checks: `judge_checks`)."""
        self._update(lambda m: m.setdefault(key, {}).__setitem__(name, value))

    def _update(self, change) -> None:
        m = self.manifest()
        change(m)
        m["updated"] = time.time()
        self._write_manifest(m)

    def write_result(self, stage: str, result: dict) -> None:
        write_json_atomic(self.stage_dir(stage) / "result.json", result)

    def result(self, stage: str) -> dict:
        p = self.path / stage / "result.json"
        if not readers.exists(p):
            return {}
        data = readers.read_json(p, "result", "stage result")
        if not isinstance(data, dict):
            raise InputError(f"{p}: expected a JSON object of figures, got "
                             f"{readers.type_name(data)}")
        return data


def _manifest_problem(m) -> str | None:
    """What makes a parsed manifest unusable, or None."""
    if not isinstance(m, dict):
        return f"expected a JSON object, got {readers.type_name(m)}"
    stages = m.get("stages", {})
    if not isinstance(stages, dict):
        return f"stages: expected an object of stage records, got {readers.type_name(stages)}"
    for name, rec in stages.items():
        if not isinstance(rec, dict):
            return f"stages.{name}: expected an object, got {readers.type_name(rec)}"
    if "tracking" in m and not isinstance(m["tracking"], dict):
        return f"tracking: expected an object of run ids, got {readers.type_name(m['tracking'])}"
    checks = m.get("judge_checks", {})
    if not isinstance(checks, dict) or not all(isinstance(v, dict) for v in checks.values()):
        return "judge_checks: expected an object of judge check records"
    if "config" in m and not isinstance(m["config"], dict):
        return f"config: expected an object, got {readers.type_name(m['config'])}"
    return None


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
