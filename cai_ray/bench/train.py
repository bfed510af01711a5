"""`cai-ray bench train`: SFT tokens/s, reward-model and DPO pairs/s through our training core
(DeepSpeed ZeRO under Ray Train) against TRL's SFTTrainer / RewardTrainer / DPOTrainer on the same
model, data, length, batch and steps; peak memory of each trainer process; MFU against the matmul
peak measured in the same command; the padding share of SFT data with and without length
grouping. Throughput is the median step after the first (DPO also end to end).

    cai-ray bench train [--steps 6] [--length 256] [--batch 4] [--rounds N]
                        [--sft-data RUN/sl_cai/sft] [--dpo-data hh-rlhf|filler]

A run is TASK:ours:WORKERS:ZERO[:FLAGS...] or TASK:trl[:jemalloc][:precompute][:bf16]; flags:
lora, jemalloc, gc (gradient checkpointing), varied, pack, separate (DPO: a sequence per answer),
precompute (TRL's DPO reference computed once), bf16 (autocast over fp32 weights on both sides;
else fp32). Rows compare with TRL in the same precision (its precomputed reference when run), LoRA
with full, packed with padded. The default list adds bf16 rows where this machine has bf16.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

from cai_ray.bench.common import run_child, scratch, step_timer, table, write
from cai_ray.bench.train_data import DPO_DATA, dpo_rows, fitted, pair_tokens, rm_rows, sft_rows


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


BETA = 0.1


def ours(task: str, model: str, length: int, batch: int, steps: int, workers: int,
         zero: int, lora: bool = False, grad_ckpt: bool = False, varied: bool = False,
         packing: bool = False, share_prompt: bool = True, dpo_data: str = "hh-rlhf",
         precision: str = "fp32") -> dict:
    from cai_ray.cluster import init_ray
    from cai_ray.config.sections import DpoCfg, LoraCfg, RewardCfg, SftCfg
    from cai_ray.rundir.files import read_jsonl, write_jsonl_atomic
    from cai_ray.train.core import fit
    from cai_ray.train.spec import TrainSpec
    from cai_ray.train.tasks import make_task

    init_ray()
    tmp = scratch()
    n = batch * steps * (1 if task == "dpo" else 2)  # DPO: its reference pass covers these rows
    rows = {"sft": lambda: sft_rows(n, varied), "reward": lambda: rm_rows(n),
            "dpo": lambda: dpo_rows(model, n, length, dpo_data)}[task]()
    write_jsonl_atomic(tmp / "data" / "train.jsonl", rows)
    write_jsonl_atomic(tmp / "data" / "eval.jsonl", rows[:batch] if task != "dpo" else [])
    Cfg = {"sft": SftCfg, "reward": RewardCfg, "dpo": DpoCfg}[task]
    extra = {"loss_type": "dpo", "beta": BETA} if task == "dpo" else {}
    if packing:
        extra["packing"] = True
    if task == "dpo":
        extra["share_prompt"] = share_prompt
    cfg = Cfg(num_workers=workers, zero_stage=zero, micro_batch_size=batch // workers,
              max_steps=steps, max_len=length, checkpoint_every=10 ** 6, lr=1e-5,
              lora=LoraCfg() if lora else None, gradient_checkpointing=grad_ckpt,
              precision=precision, **extra)
    fit(make_task(task, max_len=length, **extra), model, tmp / "data", TrainSpec.of(cfg),
        tmp / "out")
    recs = read_jsonl(tmp / "out" / "metrics.jsonl")
    steps_s = [r["perf/step_s"] for r in recs]
    return {"step_s": statistics.median(steps_s[1:]), "first_step_s": steps_s[0],
            # varied lengths: the real (unpadded) tokens; else batch x length, as TRL's rows
            "tokens_per_s": sum(r["perf/step_tokens"] for r in recs[1:]) / sum(steps_s[1:])
            if varied else None,
            "total_s": sum(steps_s) + recs[0].get("timing/reference_s", 0.0),
            "reference_s": recs[0].get("timing/reference_s"),
            "peak_rss_mb": max(r["memory/peak_rss_mb"] for r in recs),
            "pad_share": statistics.mean(r["perf/pad_share"] for r in recs)}


def trl(task: str, model: str, length: int, batch: int, steps: int,
        dpo_data: str = "hh-rlhf", precision: str = "fp32", precompute: bool = False) -> dict:
    import datasets
    import torch
    from transformers import AutoTokenizer

    stamp, stamps = step_timer()
    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    common = dict(output_dir=str(scratch()), per_device_train_batch_size=batch,
                  gradient_accumulation_steps=1, max_steps=steps, learning_rate=1e-5,
                  logging_steps=1, report_to=[], save_strategy="no", use_cpu=True,
                  bf16=precision == "bf16",  # autocast over fp32 weights, as ours
                  dataloader_num_workers=0, max_length=length)
    torch.set_num_threads(os.cpu_count() or 1)
    if task == "sft":
        from transformers import AutoModelForCausalLM
        from trl import SFTConfig, SFTTrainer

        ds = datasets.Dataset.from_list([{"messages": r["messages"]}
                                         for r in sft_rows(batch * steps)])
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32,
                                                 trust_remote_code=False)
        tr = SFTTrainer(model=m, args=SFTConfig(packing=False, **common), train_dataset=ds,
                        processing_class=tok, callbacks=[stamp])
    elif task == "dpo":  # TRL's defaults for the reference: a frozen copy of the model, run at
        # every step (precompute_ref_log_probs=False)
        from transformers import AutoModelForCausalLM
        from trl import DPOConfig, DPOTrainer

        ds = datasets.Dataset.from_list([
            {"prompt": r.get("conversation") or [{"role": "user", "content": r["prompt"]}],
             "chosen": [{"role": "assistant", "content": r["chosen"]}],
             "rejected": [{"role": "assistant", "content": r["rejected"]}]}
            for r in dpo_rows(model, batch * steps, length, dpo_data)])
        m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32,
                                                 trust_remote_code=False)
        tr = DPOTrainer(model=m, args=DPOConfig(beta=BETA, loss_type=["sigmoid"],
                                                precompute_ref_log_probs=precompute, **common),
                        train_dataset=ds, processing_class=tok, callbacks=[stamp])
    else:
        from trl import RewardConfig, RewardTrainer

        from cai_ray.train.reward import load_value_model

        ds = datasets.Dataset.from_list([{"chosen": fitted(tok, r["prompt"], r["chosen"], length),
                                          "rejected": fitted(tok, r["prompt"], r["rejected"],
                                                             length)}
                                         for r in rm_rows(batch * steps)])
        tr = RewardTrainer(model=load_value_model(model), args=RewardConfig(**common),
                           train_dataset=ds, processing_class=tok, callbacks=[stamp])
    t0 = time.time()
    tr.train()
    total = time.time() - t0
    deltas = [b - a for a, b in zip(stamps, stamps[1:])]
    from cai_ray.platform import peak_rss_mb

    return {"step_s": statistics.median(deltas[1:]), "first_step_s": deltas[0],
            "total_s": total, "peak_rss_mb": peak_rss_mb()}


def padding(sft_data: str, model: str, batch: int, max_len: int, seed: int = 0) -> dict:
    """Padded share of the positions in SFT batches of the given data, shuffled (as before) and
    length-grouped (train/core.py batches), with our SFT encoding."""
    from transformers import AutoTokenizer

    from cai_ray.stages.data import read_rows
    from cai_ray.train.core import batches, pad_share
    from cai_ray.train.sft import SftTask

    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=False)
    task = SftTask(max_len=max_len)
    items = task.encode(read_rows(sft_data, ("messages",), "the SFT data"), tok)
    out = {"rows": len(items), "batch": batch, "max_len": max_len}
    for name, lengths in (("shuffled", None), ("grouped", [len(x["input_ids"]) for x in items])):
        pad = tot = 0
        for epoch in range(3):
            for b in batches(items, batch, seed, epoch, lengths=lengths):
                p, n = pad_share(task.collate(b, 0))
                pad, tot = pad + p, tot + n
        out[f"pad_share_{name}"] = pad / tot
        out[f"padded_tokens_{name}"] = pad
    out["padded_tokens_fewer"] = 1 - out["padded_tokens_grouped"] / out["padded_tokens_shuffled"]
    return out


def partner(rows: list[dict], r: dict, task: str, runner: str) -> dict | None:
    """The measured row of `runner` on `task` in r's round (ratios are paired within a round)."""
    return next((b for b in rows if b["task"] == task and b["runner"] == runner
                 and b["round"] == r["round"] and "step_s" in b), None)


def compare(rows: list[dict]) -> None:
    """Adds each row's ratios: against TRL (and TRL on jemalloc) on the same task, packed against
    padded, LoRA against the full run with the same other flags."""
    for r in (r for r in rows if "step_s" in r):
        bf16 = " bf16" if r["runner"].endswith(" bf16") else ""
        trl = (partner(rows, r, r["task"], "TRL precomputed reference" + bf16)  # its fast setting
               or partner(rows, r, r["task"], "TRL" + bf16))
        if trl:
            r["x_trl"] = trl["step_s"] / r["step_s"]
            if r.get("pairs_per_s_end_to_end") and trl.get("pairs_per_s_end_to_end"):
                r["x_trl_end_to_end"] = (r["pairs_per_s_end_to_end"] /
                                         trl["pairs_per_s_end_to_end"])
        trl_je = partner(rows, r, r["task"], "TRL jemalloc" + bf16)
        if trl_je:
            r["x_trl_jemalloc"] = trl_je["step_s"] / r["step_s"]
        padded = partner(rows, r, r["task"], r["runner"].replace(" packed", ""))
        if r["runner"].endswith(" packed") and padded:
            r["x_padded"] = r["tokens_per_s"] / padded["tokens_per_s"]
            r["memory_x_padded"] = r["peak_rss_mb"] / padded["peak_rss_mb"]
        full = partner(rows, r, "sft", r["runner"].replace(" LoRA r16", ""))
        if r["task"] == "sft" and "LoRA" in r["runner"] and full:
            r["x_full"] = full["step_s"] / r["step_s"]
            r["memory_x_full"] = r["peak_rss_mb"] / full["peak_rss_mb"]


RATIOS = ("step_s", "tokens_per_s", "pairs_per_s", "peak_rss_mb", "x_trl", "x_trl_end_to_end",
          "x_full", "memory_x_full", "x_padded")


def medians(rows: list[dict]) -> list[dict]:
    """Per task and runner, the median over rounds of each figure (ratios were paired in-round)."""
    out = []
    for key in dict.fromkeys((r["task"], r["runner"]) for r in rows if "step_s" in r):
        mine = [r for r in rows if (r["task"], r["runner"]) == key and "step_s" in r]
        row = {"task": key[0], "runner": key[1], "rounds": len(mine)}
        for k in RATIOS:
            vals = [r[k] for r in mine if r.get(k) is not None]
            if vals:
                row[f"{k} median"] = statistics.median(vals)
                if k.startswith("x_") or k.startswith("memory_"):
                    row[f"{k} range"] = f"{min(vals):.2f}-{max(vals):.2f}"
        out.append(row)
    keys = list(dict.fromkeys(k for r in out for k in r))
    return [{k: r.get(k) for k in keys} for r in out]


DEFAULT_RUNS = ("sft:ours:1:2,sft:ours:2:2,sft:ours:1:3,sft:ours:1:2:lora,sft:trl,"
                "reward:ours:1:2,reward:ours:2:2,reward:ours:1:3,reward:trl,dpo:ours:1:2,"
                "dpo:ours:2:2,dpo:trl")
BF16_RUNS = ("sft:ours:1:2:bf16,sft:trl:bf16,reward:ours:1:2:bf16,reward:trl:bf16,"
             "dpo:ours:1:2:bf16,dpo:trl:bf16")


def default_runs() -> str:
    from cai_ray.platform import train_precision

    return DEFAULT_RUNS + ("," + BF16_RUNS if train_precision("auto")[0] == "bf16" else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray bench train")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--length", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--runs", default=None, help="default: " + DEFAULT_RUNS + "; and where this "
                    "machine has bf16: " + BF16_RUNS)
    ap.add_argument("--sft-data", default="runs/dpo/sl_cai/sft",
                    help="SFT data for the padding figures (the default job's sl_cai output)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--rounds", type=int, default=1,
                    help="run the whole list this many times, alternating its order; each ratio is "
                         "paired within a round, and a table of their medians is added")
    ap.add_argument("--dpo-data", choices=["hh-rlhf", "filler"], default="hh-rlhf",
                    help="DPO pairs: hh-rlhf (the first HH-RLHF harmlessness pairs of "
                         "../shared/data that fit the length: multi-turn prompts, varied answers) "
                         "or filler (a one-line question, both answers filled to the length: no "
                         "padding and a short prompt, the worst case for length grouping and "
                         "a shared prompt)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    args.runs = args.runs or default_runs()
    from cai_ray import models

    path = models.resolve(args.model)
    if args.one:
        task, who, *rest = args.one.split(":")
        if who == "ours":  # the trainer's workers: glibc's malloc unless the spec says jemalloc
            os.environ["CAI_RAY_ALLOCATOR"] = "jemalloc" if "jemalloc" in rest[2:] else "glibc"
        res = (ours(task, path, args.length, args.batch, args.steps, int(rest[0]), int(rest[1]),
                    lora="lora" in rest[2:], grad_ckpt="gc" in rest[2:],
                    varied="varied" in rest[2:], packing="pack" in rest[2:],
                    share_prompt="separate" not in rest[2:], dpo_data=args.dpo_data,
                    precision="bf16" if "bf16" in rest[2:] else "fp32")
               if who == "ours" else trl(task, path, args.length, args.batch, args.steps,
                                         args.dpo_data, "bf16" if "bf16" in rest else "fp32",
                                         precompute="precompute" in rest))
        print("RESULT " + json.dumps(res))
        return 0
    from transformers import AutoConfig, AutoModelForCausalLM

    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(
        AutoConfig.from_pretrained(path, trust_remote_code=False),
        trust_remote_code=False).parameters())
    peaks = {t: matmul_peak(t) for t in (1, 2)}
    rows, hh_tokens = [], {}
    runs = args.runs.split(",")
    for rnd, spec in [(k, sp) for k in range(args.rounds)
                      for sp in (runs if k % 2 == 0 else runs[::-1])]:
        task, who, *rest = spec.split(":")
        env = {}
        if who == "trl" and "jemalloc" in rest:  # TRL's process with the allocator ours uses
            from cai_ray.train.dist import jemalloc_lib

            env = {"LD_PRELOAD": jemalloc_lib() or ""}
        try:
            r = run_child("cai_ray.bench.train", spec, [
                "--model", args.model, "--steps", str(args.steps), "--length", str(args.length),
                "--batch", str(args.batch), "--dpo-data", args.dpo_data], env=env)
        except SystemExit as exc:  # one runner failing does not lose the others' figures
            print(exc, file=sys.stderr)
            rows.append({"task": task, "runner": spec, "error": str(exc), "round": rnd + 1})
            continue
        pairs = task in ("reward", "dpo")
        seqs = args.batch * (2 if pairs else 1)
        tokens = seqs * args.length
        if task == "dpo" and args.dpo_data == "hh-rlhf":  # varied lengths: the pairs' own tokens
            if "dpo" not in hh_tokens:
                hh_tokens["dpo"] = pair_tokens(path, dpo_rows(
                    path, args.batch * args.steps, args.length, args.dpo_data), args.length)
            tokens = hh_tokens["dpo"] / args.steps
        lora = " LoRA r16" if "lora" in rest[2:] else ""
        alloc = " jemalloc" if "jemalloc" in rest[2:] else ""
        alloc += " grad-ckpt" if "gc" in rest[2:] else ""
        alloc += " varied lengths" if "varied" in rest[2:] else ""
        alloc += " packed" if "pack" in rest[2:] else ""
        alloc += " prompt per answer" if "separate" in rest[2:] else ""
        prec = " bf16" if "bf16" in rest else ""
        alloc += prec
        pre = " precomputed reference" if "precompute" in rest else ""
        runner = (("TRL jemalloc" if "jemalloc" in rest else "TRL") + pre + prec
                  if who == "trl" else f"cai-ray {rest[0]} worker(s) ZeRO-{rest[1]}{lora}{alloc}")
        row = {"task": task, "runner": runner, "round": rnd + 1, "step_s": r["step_s"],
               "first_step_s": r["first_step_s"],
               "tokens_per_s": r.get("tokens_per_s") or tokens / r["step_s"],
               "pairs_per_s": args.batch / r["step_s"] if pairs else None,
               "pairs_per_s_end_to_end": args.batch * args.steps / r["total_s"]
               if pairs and r.get("total_s") else None,
               "peak_rss_mb": r.get("peak_rss_mb"), "reference_s": r.get("reference_s"),
               "pad_share": r.get("pad_share")}
        row["mfu"] = 6 * n_params * row["tokens_per_s"] / (peaks[2] * 1e9)
        rows.append(row)
        print(f"{spec}: {row['tokens_per_s']:.1f} tokens/s", file=sys.stderr)
    compare(rows)
    tbl = table(rows, ["task", "runner", "round", "step_s", "tokens_per_s", "pairs_per_s",
                       "pairs_per_s_end_to_end", "peak_rss_mb", "mfu", "x_trl", "x_trl_end_to_end",
                       "x_trl_jemalloc", "x_full", "memory_x_full", "pad_share", "x_padded",
                       "memory_x_padded", "first_step_s"])
    summary = medians(rows) if args.rounds > 1 else []
    if summary:
        tbl = table(summary, list(summary[0])) + "\n\n" + tbl
    from pathlib import Path

    pad = None
    if Path(args.sft_data).exists() or Path(args.sft_data + ".jsonl").exists():
        pad = padding(args.sft_data, path, args.batch, 384)
        tbl += ("\n\n| SFT data | rows | batch | pad share shuffled | pad share grouped | "
                "padded tokens fewer |\n|---|---|---|---|---|---|\n"
                f"| {args.sft_data} | {pad['rows']} | {args.batch} | "
                f"{pad['pad_share_shuffled']:.3f} | {pad['pad_share_grouped']:.3f} | "
                f"{pad['padded_tokens_fewer']:.1%} |")
    tbl += (f"\n\nfp32 matmul peak measured here: {peaks[1]:.0f} GFLOP/s (1 thread), "
            f"{peaks[2]:.0f} GFLOP/s (2 threads); MFU = 6 x {n_params / 1e6:.0f}M params x tokens/s"
            f" / 2-thread peak. Batch {args.batch}, length {args.length}, {args.steps} steps; fp32 "
            f"unless the runner says bf16 (autocast over fp32 weights, both sides)."
            f" DPO: beta {BETA}, sigmoid loss, the same {args.batch * args.steps} pairs "
            f"({DPO_DATA[args.dpo_data]}; DPO tokens_per_s counts both sequences of a pair, "
            f"prompt twice, shared or not); TRL with "
            f"its defaults (a frozen reference copy run at every step, precompute_ref_log_probs "
            f"off); ours computes the reference once before the first step (reference_s, counted "
            f"in end_to_end). peak_rss_mb: the trainer process (ours: the Ray Train worker).")
    write("train", {"model": args.model, "rows": rows, "matmul_peak_gflops": peaks,
                    "params": n_params, "length": args.length, "batch": args.batch,
                    "padding": pad, "rounds": args.rounds, "summary": summary}, tbl, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
