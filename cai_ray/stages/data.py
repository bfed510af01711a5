"""Reading stage inputs: a run-directory artifact or a user-given data set, with clear errors."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from cai_ray.errors import InputError
from cai_ray.rundir import readers
from cai_ray.rundir.files import write_jsonl_atomic
from cai_ray.rundir.readers import Row


def read_rows(spec: str | Path, model: type[Row], what: str) -> list[dict]:
    """Rows of a `datasets` folder (save_to_disk) or a .jsonl file, every one checked against
    `model` (rundir/rows.py): the first bad row is one InputError naming its line and field."""
    p = Path(spec)
    if readers.is_dir(p):
        import datasets

        try:
            raw = datasets.load_from_disk(str(p)).to_list()
        except Exception as exc:  # datasets raises several kinds for a non-dataset folder
            raise InputError(f"{p}: not a saved `datasets` data set ({exc})") from None
        rows = [(f"row {i}", r) for i, r in enumerate(raw)]
    else:
        if not readers.exists(p) and readers.exists(p.with_suffix(".jsonl")):
            p = p.with_suffix(".jsonl")
        if not readers.exists(p):
            raise InputError(f"{p}: {what} not found (run the stage that writes it, or set the "
                             f"data path in the job file)")
        rows = [(f"line {n}", r) for n, r in readers.read_jsonl(p, "data", what)]
    if not rows:
        raise InputError(f"{p}: {what} is empty")
    return [readers.validate(r, model, p, where).model_dump(exclude_none=True)
            for where, r in rows]


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


def mix(ai: list[dict], human: list[dict], fraction: float, seed: int = 0) -> list[dict]:
    """AI-labelled and human rows, the human ones `fraction` of the whole: round(f a / (1 - f))
    of them for a AI rows, or, when fewer are given, all of them and round(h (1 - f) / f) AI
    rows. Each side is drawn at random (seed); every row keeps its own fields."""
    a = len(ai)
    h = round(fraction * a / (1.0 - fraction))
    if h > len(human):
        h = len(human)
        a = min(a, round(h * (1.0 - fraction) / fraction))
    rng = random.Random(seed)
    return rng.sample(ai, a) + rng.sample(human, h)
