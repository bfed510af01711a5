"""The run directory: manifest, per-stage folders, atomic writes, an append-only progress log.

    RUN_DIR/manifest.json             job identity, config digest, per-stage status and timing
    RUN_DIR/<stage>/result.json       the stage's summary figures
    RUN_DIR/<stage>/<name>/           datasets (save_to_disk) and <name>.jsonl beside them
    RUN_DIR/<stage>/progress.jsonl    rows finished so far (resume after a crash or a kill)

Every file is written to a temporary name and renamed, so a killed job leaves either the old file or
the new one, never half of one. The progress log is appended line by line and fsynced; a torn last
line (a kill mid-write) is ignored when read back.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Iterable

from cai_ray.errors import InputError

MANIFEST = "manifest.json"


def fsync_dir(folder: Path) -> None:
    """Make a rename in folder durable (the directory entry itself), where the OS allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def _replace_durably(tmp: Path, path: Path) -> None:
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_json_atomic(path: Path, data) -> None:
    """Written to a temporary name, fsynced, renamed, and the rename fsynced: after a crash or
    a power cut the file is the old one or the new one, whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    _replace_durably(tmp, path)


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
            n += 1
        fh.flush()
        os.fsync(fh.fileno())
    _replace_durably(tmp, path)
    return n


def complete_lines(data: bytes) -> bytes:
    """data without a torn last line: everything after the last newline is dropped before any
    decoding, so a write killed inside a multi-byte UTF-8 character cannot break a resume."""
    return data if data.endswith(b"\n") else data[:data.rfind(b"\n") + 1]


def read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (killed writer) is skipped."""
    if not path.exists():
        return []
    rows = []
    lines = complete_lines(path.read_bytes()).decode("utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break
            raise
    return rows


class ProgressLog:
    """Append-only JSONL of finished rows, keyed by `id`: the resume point of a stage."""

    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.rows = {r["id"]: r for r in read_jsonl(path)}
        self.repeats = 0
        self._repair()
        self._fh = open(path, "a", encoding="utf-8")

    def _repair(self) -> None:
        # Drop a torn last line so the next append starts on a fresh line.
        if self.path.exists() and self.path.stat().st_size:
            data = self.path.read_bytes()
            if not data.endswith(b"\n"):
                with open(self.path, "r+b") as fh:
                    fh.truncate(len(complete_lines(data)))

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def add(self, row: dict) -> None:
        """Log a finished row once; a repeated id is not written again but counted in
        `self.repeats` (work answered twice: the fault tests assert there is none)."""
        if row["id"] in self.rows:
            self.repeats += 1
            return
        self._fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self.rows[row["id"]] = row

    def close(self) -> None:
        self._fh.close()


def save_dataset(folder: Path, rows: list[dict]) -> None:
    """A `datasets` dataset (save_to_disk) at folder/ and the same rows at folder.jsonl."""
    import datasets

    datasets.disable_progress_bars()
    folder.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(folder.with_suffix(".jsonl"), rows)
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if rows:
        ds = datasets.Dataset.from_list([_arrow_safe(r) for r in rows])
    else:
        ds = datasets.Dataset.from_dict({})
    ds.save_to_disk(str(tmp))
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)


def _arrow_safe(row: dict) -> dict:
    # Arrow needs one type per column; nested free-form dicts are kept as JSON text.
    return {k: (json.dumps(v, ensure_ascii=False) if isinstance(v, dict) else v)
            for k, v in row.items()}


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
