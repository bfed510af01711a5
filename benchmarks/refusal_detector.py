"""The refusal detector (cai_ray/eval/refusals.py) on other models' answers labelled by people,
against the detector of an earlier commit run in the same command.

    python benchmarks/refusal_detector.py --data DIR [--baseline-rev dc1f736] [--tuned a,b]

DIR: XSTest-style CSVs (`completion`, `final_label`: 1_full_compliance, 2_full_refusal,
3_partial_refusal), one per model, e.g. the five models of the XSTest replication's new prompts
(github.com/mdazizulaman/XSTest-Replication-and-Extension, New_data/model_completions). --tuned
names the files whose misses the patterns were widened on; the others are reported apart (held
out). Writes results/refusal_detector.json and prints the table of results/refusal_detector.md.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "results"


def load_rev(rev: str):
    """cai_ray/eval/refusals.py as it was at `rev`, as a module of its own."""
    src = subprocess.run(["git", "show", f"{rev}:cai_ray/eval/refusals.py"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "refusals_then.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("refusals_then", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def classes(det, text: str) -> str:
    if hasattr(det, "kind"):
        return det.kind(text)
    return "refusal" if det.is_refusal(text) else "compliance"


def score(det, rows) -> dict:
    truth = {"1_full_compliance": "compliance", "2_full_refusal": "refusal",
             "3_partial_refusal": "partial"}
    pred = [classes(det, r["completion"] or "") for r in rows]
    gold = [truth[r["final_label"]] for r in rows]
    tp = sum(p != "compliance" and g != "compliance" for p, g in zip(pred, gold))
    fp = sum(p != "compliance" and g == "compliance" for p, g in zip(pred, gold))
    fn = sum(p == "compliance" and g != "compliance" for p, g in zip(pred, gold))
    n = len(rows)
    return {"n": n, "accuracy": (n - fp - fn) / n, "precision": tp / max(tp + fp, 1),
            "recall": tp / max(tp + fn, 1),
            "three_class_accuracy": sum(p == g for p, g in zip(pred, gold)) / n,
            "partial_labelled": gold.count("partial"), "partial_found": pred.count("partial")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--baseline-rev", default="dc1f736")
    ap.add_argument("--tuned", default="llama3.0,mistrI")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from cai_ray.eval import refusals as now

    then = load_rev(args.baseline_rev)
    tuned = [t for t in args.tuned.split(",") if t]
    per, pools = {}, {"held_out": [], "tuned": []}
    for f in sorted(Path(args.data).glob("*.csv")):
        rows = list(csv.DictReader(f.open()))
        model = f.stem.split("completions_")[-1]
        pool = "tuned" if any(t == model for t in tuned) else "held_out"
        pools[pool] += rows
        per[model] = {"pool": pool, "now": score(now, rows), "then": score(then, rows)}
    res = {"data": args.data, "baseline_rev": args.baseline_rev, "tuned_on": tuned,
           "models": per, **{p: {"now": score(now, rows), "then": score(then, rows)}
                            for p, rows in pools.items() if rows}}
    OUT.mkdir(exist_ok=True)
    (OUT / "refusal_detector.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = ["| answers of | pool | n | accuracy now (then) | precision | recall | "
             "3-class now | partial predicted / labelled |", "|---|---|---|---|---|---|---|---|"]
    for name, r in [*per.items(), *[(p, {"pool": p, **res[p]}) for p in pools if p in res]]:
        a, b = r["now"], r["then"]
        lines.append(f"| {name} | {r['pool']} | {a['n']} | {a['accuracy']:.3f} "
                     f"({b['accuracy']:.3f}) | {a['precision']:.3f} | {a['recall']:.3f} | "
                     f"{a['three_class_accuracy']:.3f} | {a['partial_found']} / "
                     f"{a['partial_labelled']} |")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
