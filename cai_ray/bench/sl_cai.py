"""`cai-ray bench sl_cai`: prompts/s and generated tokens/s of the SL-CAI stage (answer, critique,
revision) on HarmBench prompts, against
  - a plain transformers loop, one prompt and one step at a time (batch 1),
  - a single-script vLLM run: three batched calls (all answers, all critiques, all revisions) on one
    in-process engine with the same settings,
  - the stage itself on 1 and 2 engine actors (Ray, streaming),
engine start included everywhere. Each runner lives in its own process so start-up and memory are
measured alike.

    cai-ray bench sl_cai [--model smollm2-135m-instruct] [--prompts 32] [--loop-prompts 6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cai_ray.bench.common import run_child, scratch, table, write

HARMBENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "harmbench" / \
    "harmbench_prompts.txt"


def _ctx(model: str, max_tokens: int, actors: int, run_dir: Path):
    from collections import Counter

    from cai_ray import models
    from cai_ray.config import load_job
    from cai_ray.constitution import load_constitution
    from cai_ray.prompts.sources import PromptSet
    from cai_ray.rundir.layout import RunDir
    from cai_ray.stages.context import Context

    job = load_job(None, [f"sl_cai.max_new_tokens={max_tokens}", "sl_cai.num_rounds=1",
                          "sl_cai.num_fewshot=1", f"engine.num_actors={actors}",
                          "engine.max_in_flight=2"], model=model)
    empty = PromptSet([], Counter())
    return Context(job, RunDir(run_dir), load_constitution("default"), empty, empty,
                   models.resolve(model), quiet=True)


def run_one(mode: str, model: str, prompts_file: str, n: int, max_tokens: int) -> dict:
    """One runner, in this process; returns its figures."""
    from cai_ray.platform import peak_rss_mb
    from cai_ray.prompts.sources import load_prompts
    from cai_ray.rundir.files import ProgressLog
    from cai_ray.stages.sl_cai import SlCaiRunner

    t0 = time.time()
    prompts = load_prompts([f"harmbench:{prompts_file}"], limit=n).prompts
    actors = 2 if mode == "stage_2_actors" else 1
    tmp = scratch()
    ctx = _ctx(model, max_tokens, actors, tmp)
    if mode.startswith("stage"):
        from cai_ray.cluster import init_ray

        init_ray()
        pool = ctx.engine_pool(ctx.base_model, name="bench")
    else:
        from cai_ray.engines.factory import make_engine
        from cai_ray.engines.local import LocalPool

        backend = "hf" if mode == "hf_loop" else "vllm"
        kw = {"dtype": "auto" if backend == "vllm" else "float32", "max_model_len": 2048,
              "cpu_cores": "0-1", "batch_size": 1}
        pool = LocalPool(make_engine(backend, ctx.base_model, **kw))
        ctx.job.engine.batch_size = 1 if mode == "hf_loop" else 1024  # 1024: 3 batched calls
    runner = SlCaiRunner(ctx, pool, ProgressLog(tmp / "p.jsonl"), ProgressLog(tmp / "h.jsonl"))
    stats = runner.run([runner.chain(p, "red_team") for p in prompts])
    wall = time.time() - t0
    rss = peak_rss_mb()
    if mode.startswith("stage"):
        rss = max(x["peak_rss_mb"] for x in pool.call_all("info"))
        pool.shutdown()
    return {"mode": mode, "prompts": len(prompts), "seconds": wall,
            "generate_s": stats["seconds"], "prompts_per_s": len(prompts) / wall,
            "generated_tokens": stats["generated_tokens"],
            "tokens_per_s": stats["generated_tokens"] / wall, "peak_rss_mb": rss}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray bench sl_cai")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--loop-prompts", type=int, default=6,
                    help="prompts for the slow one-at-a-time loop (a rate; a subset keeps it "
                    "short)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--data", default=str(HARMBENCH))
    ap.add_argument("--modes", default="hf_loop,vllm_script,stage_1_actor,stage_2_actors")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.one:  # child process: one runner
        n = args.loop_prompts if args.one == "hf_loop" else args.prompts
        print("RESULT " + json.dumps(run_one(args.one, args.model, args.data, n, args.max_tokens)))
        return 0
    rows = []
    for mode in args.modes.split(","):
        rows.append(run_child("cai_ray.bench.sl_cai", mode, [
            "--model", args.model, "--prompts", str(args.prompts), "--loop-prompts",
            str(args.loop_prompts), "--max-tokens", str(args.max_tokens), "--data", args.data]))
        print(f"{mode}: {rows[-1]['prompts_per_s']:.3f} prompts/s", file=sys.stderr)
    base = {r["mode"]: r["prompts_per_s"] for r in rows}
    for r in rows:
        if "hf_loop" in base:
            r["x_hf_loop"] = r["prompts_per_s"] / base["hf_loop"]
        if "vllm_script" in base:
            r["x_vllm_script"] = r["prompts_per_s"] / base["vllm_script"]
    tbl = table(rows, ["mode", "prompts", "seconds", "prompts_per_s", "tokens_per_s",
                       "x_hf_loop", "x_vllm_script", "peak_rss_mb"])
    write("sl_cai", {"model": args.model, "max_tokens": args.max_tokens, "rows": rows,
                     "note": "answer + 1 critique + 1 revision per prompt; engine start included"},
          tbl, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
