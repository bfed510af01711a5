"""`cai-ray bench ppo`: seconds per PPO iteration and the phase split on SmolLM2-135M, synchronous vs
asynchronous, 1 vs 2 rollout engines, against TRL's GRPOTrainer (TRL 1.16 has no PPO trainer) with
the same model, prompts per step, answers per prompt, answer length and steps. Both optimise the
same programmatic reward (shorter answers), so no reward model is needed. Both take one optimizer
step per iteration on the whole batch (PPO: one epoch, one minibatch; PPO also steps its critic).
The first iteration is warm-up and left out of the means.

    cai-ray bench ppo [--iterations 3] [--prompts 8] [--answers 2] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter

from cai_ray.bench.common import run_child, scratch, step_timer, table, write

PHASES = ("timing/generate_s", "timing/score_s", "timing/train_s", "timing/weight_sync_s")


def ours(model: str, iterations: int, prompts: int, answers: int, max_tokens: int, engines: int,
         async_mode: bool) -> dict:
    from cai_ray import models
    from cai_ray.cluster import init_ray
    from cai_ray.config import load_job
    from cai_ray.constitution import load_constitution
    from cai_ray.prompts.sources import PromptSet, load_prompts
    from cai_ray.rundir import RunDir, read_jsonl
    from cai_ray.stages import ppo
    from cai_ray.stages.context import Context

    tmp = scratch()
    job = load_job(None, ["ppo.reward_fn=short", f"ppo.iterations={iterations}",
                          f"ppo.prompts_per_iter={prompts}", f"ppo.samples_per_prompt={answers}",
                          f"ppo.max_new_tokens={max_tokens}", f"ppo.async_mode={async_mode}",
                          f"engine.num_actors={engines}", "ppo.checkpoint_every=1000",
                          # one optimizer step per iteration, as GRPOTrainer takes
                          "ppo.ppo_epochs=1", f"ppo.micro_batch_size={prompts * answers}"],
                   model=model)
    red = load_prompts(["builtin:red_team"])
    init_ray(num_cpus=engines + 2)  # logical CPUs: the engines, the learner, one spare
    ctx = Context(job, RunDir(tmp), load_constitution("default"), red,
                  PromptSet([], Counter()), models.resolve(model), quiet=True)
    res = ppo.run(ctx)
    rows = read_jsonl(tmp / "ppo" / "metrics.jsonl")[1:]
    out = {k: statistics.mean(r[k] for r in rows) for k in PHASES}
    out["iteration_s"] = statistics.mean(r["timing/iteration_s"] for r in rows)
    out["learner_peak_rss_mb"] = res["learner_peak_rss_mb"]
    return out


def trl(model: str, iterations: int, prompts: int, answers: int, max_tokens: int) -> dict:
    import datasets
    import torch
    from transformers import AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from cai_ray import models
    from cai_ray.prompts.sources import load_prompts

    path = models.resolve(model)
    tok = AutoTokenizer.from_pretrained(path)
    stamp, stamps = step_timer()

    def short(completions, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return [1.0 - min(1.0, len(tok.encode(t)) / max_tokens) for t in texts]

    ps = load_prompts(["builtin:red_team"]).prompts[:prompts * iterations]
    ds = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}]}
                                     for p in ps])
    torch.set_num_threads(2)
    args = GRPOConfig(output_dir=str(scratch()), per_device_train_batch_size=prompts * answers,
                      num_generations=answers, max_completion_length=max_tokens,
                      max_steps=iterations, learning_rate=1e-6, use_cpu=True, bf16=False,
                      report_to=[], logging_steps=1, save_strategy="no", temperature=1.0)
    tr = GRPOTrainer(model=path, reward_funcs=short, args=args, train_dataset=ds,
                     processing_class=tok, callbacks=[stamp])
    tr.train()
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"iteration_s": statistics.mean(steps[1:]), "first_iteration_s": steps[0]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray bench ppo")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--answers", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--runs", default="sync:1,async:1,sync:2,trl")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    common = (args.model, args.iterations, args.prompts, args.answers, args.max_tokens)
    if args.one:
        if args.one == "trl":
            res = trl(*common)
        else:
            mode, engines = args.one.split(":")
            res = ours(*common, int(engines), mode == "async")
        print("RESULT " + json.dumps(res))
        return 0
    rows = []
    for spec in args.runs.split(","):
        r = run_child("cai_ray.bench.ppo", spec, [
            "--model", args.model, "--iterations", str(args.iterations), "--prompts",
            str(args.prompts), "--answers", str(args.answers), "--max-tokens", str(args.max_tokens)])
        name = "TRL GRPOTrainer" if spec == "trl" else \
            f"cai-ray PPO {spec.split(':')[0]}, {spec.split(':')[1]} engine(s)"
        row = {"runner": name, "iteration_s": r["iteration_s"]}
        for k in PHASES:
            if k in r:
                row[k.split("/")[1]] = r[k]
        if "timing/weight_sync_s" in r:
            row["sync_share"] = r["timing/weight_sync_s"] / r["iteration_s"]
        row["learner_peak_rss_mb"] = r.get("learner_peak_rss_mb")
        rows.append(row)
        print(f"{spec}: {row['iteration_s']:.1f} s/iteration", file=sys.stderr)
    trl_row = [r for r in rows if r["runner"].startswith("TRL")]
    for r in rows:
        if trl_row:
            r["x_trl_time"] = r["iteration_s"] / trl_row[0]["iteration_s"]
    tbl = table(rows, ["runner", "iteration_s", "generate_s", "score_s", "train_s",
                       "weight_sync_s", "sync_share", "learner_peak_rss_mb", "x_trl_time"])
    tbl += (f"\n\n{args.prompts} prompts x {args.answers} answers x {args.max_tokens} new tokens "
            f"per iteration; mean of iterations 2..{args.iterations}. x_trl_time < 1 is faster "
            f"than TRL. cai-ray also trains a critic; GRPO has none.")
    write("ppo", {"model": args.model, "rows": rows}, tbl, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
