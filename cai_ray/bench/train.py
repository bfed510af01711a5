"""`cai-ray bench train`: SFT tokens/s and reward-model pairs/s on SmolLM2-135M through our training
core (DeepSpeed ZeRO under Ray Train): 1 vs 2 workers, ZeRO-2 vs ZeRO-3; the same jobs with TRL's
SFTTrainer / RewardTrainer (same model, length, batch, steps) as the baseline; model FLOPs
utilisation against this machine's fp32 matrix-multiply peak, measured in the same command.
Throughput is the steady state: the median step time after the first step.

    cai-ray bench train [--steps 6] [--length 256] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from cai_ray.bench.common import run_child, scratch, step_timer, table, write

FILLER = ("Here is a careful and friendly answer that explains the reasons, the risks and some "
          "safer alternatives in plain words, step by step, without skipping anything important. ")


def matmul_peak(threads: int, n: int = 2048, reps: int = 5) -> float:
    """fp32 GFLOP/s of torch.mm on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e9


def sft_rows(n: int) -> list[dict]:
    return [{"id": f"s{i}", "messages": [
        {"role": "user", "content": f"Question number {i}: how should I handle this?"},
        {"role": "assistant", "content": FILLER * 8}]} for i in range(n)]


def rm_rows(n: int) -> list[dict]:
    return [{"id": f"r{i}", "prompt": f"Question number {i}: how should I handle this?",
             "chosen": FILLER * 8, "rejected": ("No. " + FILLER) * 7} for i in range(n)]


def ours(task: str, model: str, length: int, batch: int, steps: int, workers: int,
         zero: int) -> dict:
    from cai_ray.cluster import init_ray
    from cai_ray.config import RewardCfg, SftCfg
    from cai_ray.rundir import read_jsonl, write_jsonl_atomic
    from cai_ray.train.core import fit

    init_ray()
    tmp = scratch()
    rows = sft_rows(batch * steps * 2) if task == "sft" else rm_rows(batch * steps * 2)
    write_jsonl_atomic(tmp / "data" / "train.jsonl", rows)
    write_jsonl_atomic(tmp / "data" / "eval.jsonl", rows[:batch])
    Cfg = SftCfg if task == "sft" else RewardCfg
    cfg = Cfg(num_workers=workers, zero_stage=zero, micro_batch_size=batch // workers,
              max_steps=steps, max_len=length, checkpoint_every=10 ** 6, lr=1e-5).model_dump()
    fit(task, model, tmp / "data", cfg, tmp / "out", task_kwargs={"max_len": length})
    steps_s = [r["perf/step_s"] for r in read_jsonl(tmp / "out" / "metrics.jsonl")]
    return {"step_s": statistics.median(steps_s[1:]), "first_step_s": steps_s[0]}


def trl(task: str, model: str, length: int, batch: int, steps: int) -> dict:
    import datasets
    import torch
    from transformers import AutoTokenizer

    stamp, stamps = step_timer()
    tok = AutoTokenizer.from_pretrained(model)
    common = dict(output_dir=str(scratch()), per_device_train_batch_size=batch,
                  gradient_accumulation_steps=1, max_steps=steps, learning_rate=1e-5,
                  logging_steps=1, report_to=[], save_strategy="no", use_cpu=True, bf16=False,
                  dataloader_num_workers=0, max_length=length)
    torch.set_num_threads(os.cpu_count() or 1)
    if task == "sft":
        from transformers import AutoModelForCausalLM
        from trl import SFTConfig, SFTTrainer

        ds = datasets.Dataset.from_list([{"messages": r["messages"]} for r in sft_rows(batch * steps)])
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        tr = SFTTrainer(model=m, args=SFTConfig(packing=False, **common), train_dataset=ds,
                        processing_class=tok, callbacks=[stamp])
    else:
        from trl import RewardConfig, RewardTrainer

        from cai_ray.train.reward import load_value_model

        def fit(prompt, text):  # RewardTrainer drops (not truncates) rows over max_length:
            # cut the answer so that the whole rendered conversation (system prompt, template and
            # all) is `length` tokens, as our side trains on
            convo = [{"role": "user", "content": prompt}, {"role": "assistant", "content": ""}]
            room = length - len(tok.apply_chat_template(convo, tokenize=True,
                                                        return_dict=False)) - 1
            ids = tok.encode(text, add_special_tokens=False)[:room]
            while ids and len(tok.apply_chat_template(
                    convo[:1] + [{"role": "assistant", "content": tok.decode(ids)}],
                    tokenize=True, return_dict=False)) > length:
                ids = ids[:-4]
            return convo[:1] + [{"role": "assistant", "content": tok.decode(ids)}]

        ds = datasets.Dataset.from_list([{"chosen": fit(r["prompt"], r["chosen"]),
                                          "rejected": fit(r["prompt"], r["rejected"])}
                                         for r in rm_rows(batch * steps)])
        tr = RewardTrainer(model=load_value_model(model), args=RewardConfig(**common),
                           train_dataset=ds, processing_class=tok, callbacks=[stamp])
    tr.train()
    deltas = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"step_s": statistics.median(deltas[1:]), "first_step_s": deltas[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray bench train")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--runs", default="sft:ours:1:2,sft:ours:2:2,sft:ours:1:3,sft:trl,"
                                       "reward:ours:1:2,reward:ours:2:2,reward:ours:1:3,reward:trl")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    from cai_ray import models

    path = models.resolve(args.model)
    if args.one:
        task, who, *rest = args.one.split(":")
        res = (ours(task, path, args.length, args.batch, args.steps, int(rest[0]), int(rest[1]))
               if who == "ours" else trl(task, path, args.length, args.batch, args.steps))
        print("RESULT " + json.dumps(res))
        return 0
    from transformers import AutoConfig

    from transformers import AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(path)).parameters())
    peaks = {t: matmul_peak(t) for t in (1, 2)}
    rows = []
    for spec in args.runs.split(","):
        task, who, *rest = spec.split(":")
        try:
            r = run_child("cai_ray.bench.train", spec, [
                "--model", args.model, "--steps", str(args.steps), "--length", str(args.length),
                "--batch", str(args.batch)])
        except SystemExit as exc:  # one runner failing does not lose the others' figures
            print(exc, file=sys.stderr)
            rows.append({"task": task, "runner": spec, "error": str(exc)})
            continue
        seqs = args.batch * (2 if task == "reward" else 1)
        tokens = seqs * args.length
        row = {"task": task, "runner": "TRL" if who == "trl" else
               f"cai-ray {rest[0]} worker(s) ZeRO-{rest[1]}", "step_s": r["step_s"],
               "first_step_s": r["first_step_s"], "tokens_per_s": tokens / r["step_s"],
               "pairs_per_s": args.batch / r["step_s"] if task == "reward" else None}
        row["mfu"] = 6 * n_params * row["tokens_per_s"] / (peaks[2] * 1e9)
        rows.append(row)
        print(f"{spec}: {row['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    for task in ("sft", "reward"):
        base = [r for r in rows if r["task"] == task and r["runner"] == "TRL"]
        for r in rows:
            if r["task"] == task and base and "step_s" in r:
                r["x_trl"] = base[0]["step_s"] / r["step_s"]
    tbl = table(rows, ["task", "runner", "step_s", "tokens_per_s", "pairs_per_s", "mfu", "x_trl",
                       "first_step_s"])
    tbl += (f"\n\nfp32 matmul peak measured here: {peaks[1]:.0f} GFLOP/s (1 thread), "
            f"{peaks[2]:.0f} GFLOP/s (2 threads); MFU = 6 x {n_params / 1e6:.0f}M params x tokens/s"
            f" / 2-thread peak. Batch {args.batch}, length {args.length}, fp32, {args.steps} steps.")
    write("train", {"model": args.model, "rows": rows, "matmul_peak_gflops": peaks,
                    "params": n_params, "length": args.length, "batch": args.batch}, tbl, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
