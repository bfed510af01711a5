"""`cai-ray bench online_dpo`: one online-DPO iteration, ours (the dpo stage with dpo.online:
true) against TRL's OnlineDPOTrainer (trl.experimental) at identical settings, in one command: the
same policy (SmolLM2-135M-Instruct), the same reward model (the policy's weights under a seeded
fresh scalar head, saved once and loaded by both), the same prompts, k = 2 answers per prompt,
the same new-token budget, beta and learning rate, one optimizer step per iteration, fp32.

TRL generates with transformers (its default; its vLLM modes need a GPU server or colocated
CUDA), with gradient checkpointing off (faster). Each runner is a fresh process; the first
iteration (start-up) is left out of the means. Reported: samples (answers) per second, seconds
per iteration and our phase split, peak resident memory of the learner (TRL: its one process).

    cai-ray bench online_dpo [--iterations 4] [--prompts 8] [--max-tokens 64] [--runs ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

from cai_ray.bench.common import run_child, scratch, step_timer, table, write

PHASES = ("timing/generate_s", "timing/score_s", "timing/train_s", "timing/weight_sync_s")
K, BETA, LR = 2, 0.1, 1e-6


def reward_model(model: str) -> str:
    """The policy's weights with a fresh scalar head (seed 0), saved once per machine."""
    import torch

    from cai_ray import models
    from cai_ray.models import trust_remote_code
    from cai_ray.train.reward import load_value_model

    dest = Path(scratch().parent) / "online_dpo_reward_model"
    if not (dest / "config.json").exists():
        torch.manual_seed(0)
        path = models.resolve(model)
        rm = load_value_model(path)
        rm.save_pretrained(dest, safe_serialization=True)
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code()).save_pretrained(
            dest)
    return str(dest)


def ours(model: str, rm: str, iterations: int, prompts: int, max_tokens: int) -> dict:
    from cai_ray import models
    from cai_ray.cluster import init_ray
    from cai_ray.config import load_job
    from cai_ray.constitution import load_constitution
    from cai_ray.prompts.sources import PromptSet, load_prompts
    from cai_ray.rundir.files import read_jsonl
    from cai_ray.rundir.layout import RunDir
    from cai_ray.stages import online_dpo
    from cai_ray.stages.context import Context

    tmp = scratch()
    job = load_job(None, ["dpo.online=true", "dpo.ranker=model", f"dpo.iterations={iterations}",
                          f"dpo.prompts_per_iter={prompts}", f"dpo.samples_per_prompt={K}",
                          f"dpo.max_new_tokens={max_tokens}", f"dpo.beta={BETA}",
                          f"dpo.lr={LR}", "dpo.heldout_prompts=0", "dpo.checkpoint_every=1000",
                          "judge.gate=off"], model=model)
    init_ray(num_cpus=4)  # logical CPUs: the engine, the learner, spare; 2 physical cores
    ctx = Context(job, RunDir(tmp), load_constitution("default"),
                  load_prompts(["builtin:red_team"]), PromptSet([], Counter()),
                  models.resolve(model), quiet=True)
    cfg = online_dpo.rl_section(job).model_copy(update={"reward_model": rm})
    from cai_ray.stages import rl

    res = rl.train(ctx, cfg, "dpo")
    rows = read_jsonl(tmp / "dpo" / "metrics.jsonl")[1:]
    out = {k: statistics.mean(r[k] for r in rows) for k in PHASES}
    out["iteration_s"] = statistics.mean(r["timing/iteration_s"] for r in rows)
    out["samples_per_s"] = prompts * K / out["iteration_s"]
    out["pairs"] = statistics.mean(r.get("dpo/pairs", 0) for r in rows)
    for k in ("memory/learner_peak_mb", "memory/reference_peak_mb", "memory/engine_peak_mb"):
        out[k.split("/")[1]] = res.get(k)
    return out


def trl(model: str, rm: str, iterations: int, prompts: int, max_tokens: int) -> dict:
    import datasets
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from cai_ray import models
    from cai_ray.models import trust_remote_code
    from cai_ray.platform import peak_rss_mb
    from cai_ray.prompts.sources import load_prompts

    path = models.resolve(model)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code())
    stamp, stamps = step_timer()
    ps = load_prompts(["builtin:red_team"]).prompts[:prompts * iterations]
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}]}
                                     for p in ps])
    torch.set_num_threads(2)
    args = OnlineDPOConfig(output_dir=str(scratch()), per_device_train_batch_size=prompts,
                           max_new_tokens=max_tokens, max_steps=iterations, learning_rate=LR,
                           beta=BETA, use_cpu=True, bf16=False, report_to=[], logging_steps=1,
                           save_strategy="no", temperature=1.0, gradient_checkpointing=False)
    scorer = AutoModelForSequenceClassification.from_pretrained(
        rm, num_labels=1, trust_remote_code=trust_remote_code())
    tr = OnlineDPOTrainer(model=path, reward_funcs=scorer, args=args, train_dataset=ds,
                          processing_class=tok, reward_processing_classes=tok,
                          callbacks=[stamp])
    tr.train()
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    it = statistics.mean(steps[1:])
    return {"iteration_s": it, "first_iteration_s": steps[0], "samples_per_s": prompts * K / it,
            "learner_peak_mb": peak_rss_mb()}


RUNNERS = {"ours": "cai-ray online DPO", "trl": "TRL OnlineDPOTrainer"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray bench online_dpo")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--runs", default="trl,ours")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    common = (args.iterations, args.prompts, args.max_tokens)
    rm = reward_model(args.model)
    if args.one:
        res = (trl if args.one == "trl" else ours)(args.model, rm, *common)
        print("RESULT " + json.dumps(res))
        return 0
    rows = {}
    for spec in args.runs.split(","):
        try:
            r = run_child("cai_ray.bench.online_dpo", spec, [
                "--model", args.model, "--iterations", str(args.iterations), "--prompts",
                str(args.prompts), "--max-tokens", str(args.max_tokens)])
        except SystemExit as exc:  # one failing runner does not lose the other's figures
            print(exc, file=sys.stderr)
            continue
        row = {"runner": RUNNERS[spec], "samples_per_s": r["samples_per_s"],
               "iteration_s": r["iteration_s"],
               **{k.split("/")[1]: r[k] for k in PHASES if k in r},
               **{k: r[k] for k in ("learner_peak_mb", "reference_peak_mb", "engine_peak_mb")
                  if r.get(k) is not None}}
        rows[spec] = row
        print(f"{spec}: {row['samples_per_s']:.2f} samples/s", file=sys.stderr)
    if "ours" in rows and "trl" in rows:
        rows["ours"]["x_samples_per_s"] = rows["ours"]["samples_per_s"] / rows["trl"][
            "samples_per_s"]
    tbl = table(list(rows.values()), ["runner", "samples_per_s", "iteration_s", "generate_s",
                                      "score_s", "train_s", "weight_sync_s", "learner_peak_mb",
                                      "reference_peak_mb", "engine_peak_mb", "x_samples_per_s"])
    tbl += (f"\n\n{args.prompts} prompts x {K} answers x {args.max_tokens} new tokens per "
            f"iteration, one optimizer step, beta {BETA}, lr {LR}, fp32, the same reward model; "
            f"mean of iterations 2..{args.iterations}. TRL's peak is its single process (policy, "
            f"reference, reward model, generation); ours are separate processes.")
    write("online_dpo", {"model": args.model, "settings": vars(args),
                         "rows": list(rows.values())}, tbl, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
