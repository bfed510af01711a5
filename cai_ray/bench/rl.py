"""`cai-ray bench rl`: seconds per RL iteration on SmolLM2-135M-Instruct (fp32), ours against TRL at
identical settings, in one command: the same prompts, 4 samples per prompt, 64 new tokens, one
optimizer step per iteration, a KL term against a reference model with the same coefficient on both
sides, and the same programmatic reward (shorter answers), so no reward model is needed.

    ours grpo   KL (k3) in the loss, per-answer token mean      vs TRL GRPOTrainer (loss_type grpo)
    ours rloo   KL (k1) in the reward, leave-one-out baseline   vs TRL RLOOTrainer
    ours ppo    the same, with a critic and GAE                 vs TRL GRPOTrainer (TRL has no PPO)

TRL runs with gradient checkpointing off (faster than its default, which recomputes activations):
the stronger baseline. Each runner is a fresh process; the first iteration (start-up, compiles) is
left out of the means. Reported: seconds per iteration and the phase split, learner peak resident
memory (TRL: its one process), and the sampler/learner log-prob mismatch.

    cai-ray bench rl [--iterations 4] [--prompts 8] [--answers 4] [--max-tokens 64] [--runs ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter

from cai_ray.bench.common import run_child, scratch, step_timer, table, write

PHASES = ("timing/generate_s", "timing/score_s", "timing/train_s", "timing/weight_sync_s")
KL_COEF = 0.04


def ours(model: str, algorithm: str, iterations: int, prompts: int, answers: int,
         max_tokens: int) -> dict:
    from cai_ray import models
    from cai_ray.cluster import init_ray
    from cai_ray.config import load_job
    from cai_ray.constitution import load_constitution
    from cai_ray.prompts.sources import PromptSet, load_prompts
    from cai_ray.rundir.files import read_jsonl
    from cai_ray.rundir.layout import RunDir
    from cai_ray.stages import rl
    from cai_ray.stages.context import Context

    tmp = scratch()
    job = load_job(None, [f"rl.algorithm={algorithm}", "rl.reward=short",
                          f"rl.iterations={iterations}", f"rl.prompts_per_iter={prompts}",
                          f"rl.samples_per_prompt={answers}", f"rl.max_new_tokens={max_tokens}",
                          f"rl.kl_coef={KL_COEF}", "rl.lr=1e-6", "rl.checkpoint_every=1000"],
                   model=model)
    init_ray(num_cpus=4)  # logical CPUs: the engine, the learner, spare; 2 physical cores
    ctx = Context(job, RunDir(tmp), load_constitution("default"),
                  load_prompts(["builtin:red_team"]), PromptSet([], Counter()),
                  models.resolve(model), quiet=True)
    res = rl.run(ctx)
    rows = read_jsonl(tmp / "rl" / "metrics.jsonl")[1:]
    out = {k: statistics.mean(r[k] for r in rows) for k in PHASES}
    out["iteration_s"] = statistics.mean(r["timing/iteration_s"] for r in rows)
    out["mismatch_kl"] = statistics.mean(r.get("mismatch/kl", 0.0) for r in rows)
    out["mismatch_abs_logp"] = statistics.mean(r.get("mismatch/abs_logp_diff", 0.0)
                                               for r in rows)
    out["generated_tokens"] = statistics.mean(r["generated_tokens"] for r in rows)
    for k in ("memory/learner_peak_mb", "memory/reference_peak_mb", "memory/engine_peak_mb"):
        out[k.split("/")[1]] = res.get(k)
    return out


def trl(model: str, kind: str, iterations: int, prompts: int, answers: int,
        max_tokens: int) -> dict:
    import datasets
    import torch
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    from cai_ray import models
    from cai_ray.platform import peak_rss_mb
    from cai_ray.prompts.sources import load_prompts

    path = models.resolve(model)
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    stamp, stamps = step_timer()

    def short(completions, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0 - min(1.0, len(tok.encode(t)) / max_tokens) for t in texts]

    ps = load_prompts(["builtin:red_team"]).prompts[:prompts * iterations]
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}]}
                                     for p in ps])
    torch.set_num_threads(2)
    Config, Trainer = (GRPOConfig, GRPOTrainer) if kind == "grpo" else (RLOOConfig, RLOOTrainer)
    extra = {"loss_type": "grpo"} if kind == "grpo" else {}
    args = Config(output_dir=str(scratch()), per_device_train_batch_size=prompts * answers,
                  num_generations=answers, max_completion_length=max_tokens,
                  max_steps=iterations, learning_rate=1e-6, use_cpu=True, bf16=False,
                  report_to=[], logging_steps=1, save_strategy="no", temperature=1.0,
                  beta=KL_COEF, gradient_checkpointing=False, **extra)
    tr = Trainer(model=path, reward_funcs=short, args=args, train_dataset=ds,
                 processing_class=tok, callbacks=[stamp])
    tr.train()
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"iteration_s": statistics.mean(steps[1:]), "first_iteration_s": steps[0],
            "learner_peak_mb": peak_rss_mb()}


RUNNERS = {"grpo": ("cai-ray grpo", "trl-grpo"), "rloo": ("cai-ray rloo", "trl-rloo"),
           "ppo": ("cai-ray ppo (critic)", "trl-grpo"), "trl-grpo": ("TRL GRPOTrainer", None),
           "trl-rloo": ("TRL RLOOTrainer", None)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray bench rl")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--answers", type=int, default=4)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--runs", default="trl-grpo,grpo,trl-rloo,rloo,ppo")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    common = (args.iterations, args.prompts, args.answers, args.max_tokens)
    if args.one:
        res = (trl(args.model, args.one.split("-")[1], *common) if args.one.startswith("trl-")
               else ours(args.model, args.one, *common))
        print("RESULT " + json.dumps(res))
        return 0
    rows, by_spec = [], {}
    for spec in args.runs.split(","):
        try:
            r = run_child("cai_ray.bench.rl", spec, [
                "--model", args.model, "--iterations", str(args.iterations), "--prompts",
                str(args.prompts), "--answers", str(args.answers), "--max-tokens",
                str(args.max_tokens)])
        except SystemExit as exc:  # one failing runner does not lose the others' figures
            print(exc, file=sys.stderr)
            continue
        row = {"runner": RUNNERS[spec][0], "iteration_s": r["iteration_s"]}
        for k in PHASES:
            if k in r:
                row[k.split("/")[1]] = r[k]
        if "timing/weight_sync_s" in r:
            row["sync_share"] = r["timing/weight_sync_s"] / r["iteration_s"]
        for k in ("learner_peak_mb", "reference_peak_mb", "engine_peak_mb", "mismatch_kl",
                  "mismatch_abs_logp"):
            if r.get(k) is not None:
                row[k] = r[k]
        row["total_peak_mb"] = sum(row.get(k) or 0.0 for k in ("learner_peak_mb",
                                                               "reference_peak_mb",
                                                               "engine_peak_mb"))
        rows.append(row)
        by_spec[spec] = row
        print(f"{spec}: {row['iteration_s']:.1f} s/iteration", file=sys.stderr)
    for spec, row in by_spec.items():
        base = RUNNERS[spec][1]
        if base in by_spec:
            row["vs"] = RUNNERS[base][0]
            row["x_time"] = row["iteration_s"] / by_spec[base]["iteration_s"]
            row["x_memory"] = row["learner_peak_mb"] / by_spec[base]["learner_peak_mb"]
    tbl = table(rows, ["runner", "iteration_s", "generate_s", "score_s", "train_s",
                       "weight_sync_s", "sync_share", "learner_peak_mb", "reference_peak_mb",
                       "engine_peak_mb", "total_peak_mb", "mismatch_kl", "vs", "x_time",
                       "x_memory"])
    tbl += (f"\n\n{args.prompts} prompts x {args.answers} answers x {args.max_tokens} new tokens "
            f"per iteration, one optimizer step, KL coefficient {KL_COEF} on both sides; mean of "
            f"iterations 2..{args.iterations}. x_time < 1 is faster than the TRL runner named in "
            f"`vs`. learner_peak_mb: our learner process (the reference and the engine are "
            f"processes of their own, listed beside it, total_peak_mb sums the three); TRL's: its "
            f"single process, which holds the policy, the reference and generation.")
    write("rl", {"model": args.model, "settings": vars(args), "rows": rows}, tbl, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
