"""Benchmark plumbing: measured rows -> JSON + a short markdown table under benchmarks/results/."""

from __future__ import annotations

import atexit
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"


def scratch() -> Path:
    """A temporary folder for one runner's data and checkpoints, removed when the command exits
    (a benchmark's checkpoints run to gigabytes)."""
    path = Path(tempfile.mkdtemp(prefix="cai-ray-bench-"))
    atexit.register(shutil.rmtree, path, True)
    return path


def machine() -> dict:
    import torch

    from cai_ray.platform import has_cuda, num_cores

    return {"cores": num_cores(), "cuda": has_cuda(), "torch": torch.__version__,
            "python": platform.python_version(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    head = "| " + " | ".join(cols) + " |"
    sep = "|" + "|".join("---" for _ in cols) + "|"
    body = ["| " + " | ".join(fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write(name: str, payload: dict, tbl: str, out_dir: Path | None = None) -> Path:
    """NAME.json and NAME.md in `out_dir` (default benchmarks/results); an `out_dir` ending in .json
    is the JSON file itself, with the table beside it as .md."""
    out = Path(out_dir or RESULTS)
    js, md = ((out, out.with_suffix(".md")) if out.suffix == ".json"
              else (out / f"{name}.json", out / f"{name}.md"))
    js.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine(), **payload}
    js.write_text(json.dumps(payload, indent=2) + "\n")
    md.write_text(f"# {name}\n\n{tbl}\n")
    print(tbl)
    print(f"\nwritten: {js}")
    return js


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


def run_child(module: str, spec: str, args: list[str], env: dict | None = None) -> dict:
    """Run one benchmark runner in a fresh process (start-up and memory measured alike for every
    runner): `python -m MODULE --one SPEC ARGS`, which prints one `RESULT {json}` line. env: added
    to the child's environment."""
    import os
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", module, "--one", spec, *args],
                         capture_output=True, text=True, env={**os.environ, **(env or {})})
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    if res.returncode or not line:
        print(res.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"{module}: runner {spec} failed")
    return json.loads(line[0][len("RESULT "):])


def step_timer():
    """A transformers TrainerCallback that records when each step ends, and the list it fills;
    step durations are the differences (the first includes warm-up)."""
    from transformers import TrainerCallback

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, *a, **k):
            if not stamps:
                stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    return Stamp(), stamps
