"""`cai-ray bench generation`: generated tokens/s of the vLLM engine (an engine actor, as the stages
use it), of the transformers engine batched, and of a batch-1 transformers loop, on the same
prompts, in one command; peak resident memory of each; greedy agreement of vLLM and transformers in
fp32.

    cai-ray bench generation [--model smollm2-135m-instruct] [--prompts 64] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import os

from cai_ray.bench.common import Timer, table, write


def _requests(n: int):
    from cai_ray.generation import Request
    from cai_ray.prompts.sources import load_prompts

    ps = load_prompts(["builtin:red_team", "builtin:helpful"]).prompts[:n]
    return [Request(p.id, messages=[{"role": "user", "content": p.prompt}]) for p in ps]


def _tokens(outs) -> int:
    return sum(len(c.token_ids) for o in outs for c in o)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray bench generation")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--loop-prompts", type=int, default=16,
                    help="prompts for the slow batch-1 loop (a rate; a subset keeps it short)")
    ap.add_argument("--hf-batch", type=int, default=16)
    ap.add_argument("--agreement-tokens", type=int, default=32)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    import ray

    from cai_ray import models
    from cai_ray.cluster import init_ray
    from cai_ray.engines.factory import make_engine
    from cai_ray.engines.pool import EnginePool
    from cai_ray.generation import Sampling
    from cai_ray.platform import peak_rss_mb

    path = models.resolve(args.model)
    reqs = _requests(args.prompts)
    greedy = Sampling(max_tokens=args.max_tokens)
    rows, extra = [], {}

    init_ray()
    for dtype in ("bfloat16", "float32"):
        pool = EnginePool(1, "vllm", path, num_cpus=1, engine_kwargs={
            "dtype": dtype, "max_model_len": 2048, "max_num_seqs": 64, "kv_cache_gib": 1})
        with Timer() as t:
            outs = ray.get(pool.actors[0].generate.remote(reqs, greedy))
        info = pool.call_all("info")[0]
        rows.append({"backend": f"vllm actor ({dtype})", "prompts": len(reqs),
                     "tokens": _tokens(outs), "seconds": t.seconds,
                     "tokens_per_s": _tokens(outs) / t.seconds, "startup_s": pool.startup_s,
                     "peak_rss_mb": info["peak_rss_mb"]})
        if dtype == "float32":
            extra["vllm_fp32"] = outs
        pool.shutdown()

    hf = make_engine("hf", path, dtype="float32", batch_size=args.hf_batch)
    with Timer() as t:
        outs = hf.generate(reqs, greedy)
    rows.append({"backend": f"transformers batched ({args.hf_batch}, fp32)", "prompts": len(reqs),
                 "tokens": _tokens(outs), "seconds": t.seconds,
                 "tokens_per_s": _tokens(outs) / t.seconds, "peak_rss_mb": peak_rss_mb()})
    hf_outs = outs
    hf.batch_size = 1
    loop = reqs[:args.loop_prompts]
    with Timer() as t:
        outs = [hf.generate([r], greedy)[0] for r in loop]
    rows.append({"backend": "transformers batch-1 loop (fp32)", "prompts": len(loop),
                 "tokens": _tokens(outs), "seconds": t.seconds,
                 "tokens_per_s": _tokens(outs) / t.seconds, "peak_rss_mb": peak_rss_mb()})

    base = rows[-1]["tokens_per_s"]
    for r in rows:
        r["x_batch1_loop"] = r["tokens_per_s"] / base
    k = args.agreement_tokens
    agree = [a[0].token_ids[:k] == b[0].token_ids[:k] for a, b in zip(hf_outs, extra["vllm_fp32"])]
    payload = {"model": args.model, "max_tokens": args.max_tokens, "rows": rows,
               "greedy_agreement_fp32": {"first_tokens": k, "share": sum(agree) / len(agree),
                                         "prompts": len(agree)}}
    tbl = table(rows, ["backend", "prompts", "tokens", "seconds", "tokens_per_s",
                       "x_batch1_loop", "startup_s", "peak_rss_mb"])
    tbl += (f"\n\nvLLM vs transformers (fp32, greedy): first {k} tokens agree on "
            f"{sum(agree)}/{len(agree)} prompts")
    write("generation", payload, tbl, args.out)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
