"""Files that survive a kill: atomic JSON and JSONL writes, JSONL reads that skip a torn last
line, the append-only progress log a stage resumes from, and datasets saved both ways.

Every file is written to a temporary name, fsynced and renamed, so a killed job leaves either the
old file or the new one, never half of one. The progress log is appended line by line and fsynced.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Iterable


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
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk or a kill leaves no half-written temporary
        raise
    _replace_durably(tmp, path)


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    n = 0
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
                n += 1
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
