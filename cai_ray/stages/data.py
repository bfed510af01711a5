"""Reading stage inputs: a run-directory artifact or a user-given data set, with clear errors."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.rundir.files import read_jsonl, write_jsonl_atomic


def read_rows(spec: str | Path, need: tuple[str, ...], what: str) -> list[dict]:
    """Rows of a `datasets` folder (save_to_disk) or a .jsonl file, checked for columns."""
    p = Path(spec)
    if p.is_dir():
        import datasets

        try:
            rows = datasets.load_from_disk(str(p)).to_list()
        except Exception as exc:  # datasets raises several kinds for a non-dataset folder
            raise InputError(f"{p}: not a saved `datasets` data set ({exc})") from None
    elif p.exists():
        try:
            rows = read_jsonl(p)
        except json.JSONDecodeError as exc:
            raise InputError(f"{p}: line {exc.lineno}: invalid JSON") from None
    elif p.with_suffix(".jsonl").exists():
        rows = read_jsonl(p.with_suffix(".jsonl"))
    else:
        raise InputError(f"{p}: {what} not found (run the stage that writes it, or set the "
                         f"data path in the job file)")
    if not rows:
        raise InputError(f"{p}: {what} is empty")
    missing = [c for c in need if c not in rows[0]]
    if missing:
        raise InputError(f"{p}: {what} lacks column(s) {missing} (has {sorted(rows[0])})")
    return [{k: (json.loads(v) if k in ("messages", "conversation") and isinstance(v, str) else v)
             for k, v in r.items()} for r in rows]


def split_rows(rows: list[dict], eval_fraction: float) -> tuple[list[dict], list[dict]]:
    """Stable split by row id (or content hash): the same row is always on the same side."""
    def key(r):
        raw = str(r.get("id") or json.dumps(r, sort_keys=True, default=str))
        return int(hashlib.sha1(raw.encode()).hexdigest()[:8], 16) % 10_000

    cut = int(eval_fraction * 10_000)
    ev = [r for r in rows if key(r) < cut]
    tr = [r for r in rows if key(r) >= cut]
    if not ev and eval_fraction > 0 and len(tr) > 1:
        ev, tr = tr[-1:], tr[:-1]
    return tr, ev


def write_split(folder: Path, train: list[dict], evals: list[dict]) -> Path:
    write_jsonl_atomic(folder / "train.jsonl", train)
    write_jsonl_atomic(folder / "eval.jsonl", evals)
    return folder
