"""`cai-ray bench precision`: our trainers in bf16 (autocast over fp32 weights, `precision: bf16`)
against fp32, on the tiny model and on SmolLM2: SFT and DPO on the same HH-RLHF rows, seed and
steps. Per step: the loss of each, their relative gap; the median step time and peak memory of each.

    cai-ray bench precision [--models tiny-random-llama,smollm2-135m-instruct] [--steps 12]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

from cai_ray.bench.common import run_child, scratch, table, write
from cai_ray.bench.train_data import hh_pair_rows

LR = {("sft", "tiny-random-llama"): 1e-3, ("dpo", "tiny-random-llama"): 1e-3,
      ("sft", "smollm2-135m-instruct"): 1e-5, ("dpo", "smollm2-135m-instruct"): 5e-6}
"""Learning rates at which the losses move within the steps (DPO's at 1e-6 would barely leave
log 2)."""


def one(task: str, model: str, path: str, precision: str, steps: int, batch: int,
        length: int) -> dict:
    from cai_ray.cluster import init_ray
    from cai_ray.config.sections import DpoCfg, SftCfg
    from cai_ray.rundir.files import read_jsonl, write_jsonl_atomic
    from cai_ray.train.core import fit
    from cai_ray.train.spec import TrainSpec
    from cai_ray.train.tasks import make_task

    init_ray()
    tmp = scratch()
    pairs = hh_pair_rows(path, batch * steps, length)
    rows = pairs if task == "dpo" else [
        {"id": p["id"], "messages": [*p["conversation"],
                                     {"role": "assistant", "content": p["chosen"]}]}
        for p in pairs]
    write_jsonl_atomic(tmp / "data" / "train.jsonl", rows)
    write_jsonl_atomic(tmp / "data" / "eval.jsonl", [])
    extra = {"loss_type": "dpo", "beta": 0.1} if task == "dpo" else {}
    cfg = (DpoCfg if task == "dpo" else SftCfg)(
        num_workers=1, zero_stage=2, micro_batch_size=batch, max_steps=steps, max_len=length,
        checkpoint_every=10 ** 6, lr=LR[task, model], lr_schedule="constant", precision=precision,
        **extra)
    spec = TrainSpec.of(cfg)
    fit(make_task(task, max_len=length, **extra), path, tmp / "data", spec, tmp / "out")
    recs = read_jsonl(tmp / "out" / "metrics.jsonl")
    return {"loss": [r["train/loss"] for r in recs], "step_s": [r["perf/step_s"] for r in recs],
            "peak_rss_mb": max(r["memory/peak_rss_mb"] for r in recs),
            "precision": spec.precision, "reason": spec.precision_reason}


def compare(fp32: dict, bf16: dict) -> dict:
    """The bf16 curve against the fp32 one, step by step."""
    gaps = [abs(b - f) / abs(f) for f, b in zip(fp32["loss"], bf16["loss"])]
    return {"max_rel_gap": max(gaps), "mean_rel_gap": statistics.mean(gaps),
            "first_loss_fp32": fp32["loss"][0], "last_loss_fp32": fp32["loss"][-1],
            "last_loss_bf16": bf16["loss"][-1],
            "step_s_fp32": statistics.median(fp32["step_s"][1:]),
            "step_s_bf16": statistics.median(bf16["step_s"][1:]),
            "speedup_bf16": statistics.median(fp32["step_s"][1:])
            / statistics.median(bf16["step_s"][1:]),
            "peak_mb_fp32": fp32["peak_rss_mb"], "peak_mb_bf16": bf16["peak_rss_mb"]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray bench precision")
    ap.add_argument("--models", default="tiny-random-llama,smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from cai_ray import models
    from cai_ray.platform import BF16_FLAGS, cpu_flags

    if args.one:
        task, model, precision = args.one.split(":")
        print("RESULT " + json.dumps(one(task, model, str(models.prepare(model)), precision,
                                         args.steps, args.batch, args.length)))
        return 0
    rows, curves = [], {}
    for model in args.models.split(","):
        for task in ("sft", "dpo"):
            got = {}
            for precision in ("fp32", "bf16"):
                got[precision] = run_child("cai_ray.bench.precision",
                                           f"{task}:{model}:{precision}",
                                           ["--steps", str(args.steps), "--batch", str(args.batch),
                                            "--length", str(args.length)])
                print(f"{task} {model} {precision}: {got[precision]['loss']}", file=sys.stderr)
            curves[f"{task}:{model}"] = got
            rows.append({"model": model, "task": task, **compare(got["fp32"], got["bf16"])})
    tbl = table(rows, ["model", "task", "first_loss_fp32", "last_loss_fp32", "last_loss_bf16",
                       "max_rel_gap", "mean_rel_gap", "step_s_fp32", "step_s_bf16",
                       "speedup_bf16", "peak_mb_fp32", "peak_mb_bf16"])
    flags = sorted(cpu_flags() & set(BF16_FLAGS)) or ["no bf16 instructions"]
    tbl += (f"\n\nCPU: {', '.join(flags)}. {args.steps} steps, batch {args.batch}, length "
            f"{args.length}, one worker, ZeRO-2, constant learning rates "
            f"{ {f'{t}/{m}': v for (t, m), v in LR.items()} }; the same HH-RLHF rows (SFT: the "
            "chosen conversations) and seed in both precisions. max_rel_gap: the largest "
            "|bf16 - fp32| / |fp32| over the steps' losses.")
    write("precision", {"rows": rows, "curves": curves, "steps": args.steps,
                        "batch": args.batch, "length": args.length, "cpu_bf16_flags": flags},
          tbl, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
