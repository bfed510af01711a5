"""`cai-ray bench judge`: judgements/s of the constitutional judge on engine actors against a plain
transformers loop that scores the same pairs one at a time, same model, both orders in both.

    cai-ray bench judge [--model smollm2-135m-instruct] [--pairs 32] [--loop-pairs 8]
"""

from __future__ import annotations

import argparse

from cai_ray.bench.common import Timer, table, write
from cai_ray.config.judge import JudgeCfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="cai-ray bench judge")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--loop-pairs", type=int, default=8)
    ap.add_argument("--principles", type=int, default=JudgeCfg().principles_per_pair,
                    help="principles per pair (default: the judge section's default)")
    ap.add_argument("--method", default="logprob", choices=["logprob", "generative"],
                    help="judge method (cai_ray/judges)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    from cai_ray import models
    from cai_ray.cluster import init_ray
    from cai_ray.constitution import load_constitution
    from cai_ray.engines.hf_engine import HfEngine
    from cai_ray.engines.local import LocalPool
    from cai_ray.engines.pool import EnginePool
    from cai_ray.judges import JudgeItem, build
    from cai_ray.judges.quality import DEFAULT_HH, hh_pairs

    path = models.resolve(args.model)
    const = load_constitution("default")
    tok = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    pairs = hh_pairs(DEFAULT_HH, args.pairs)
    items = [JudgeItem(p["id"], p["conversation"], p["chosen"], p["rejected"]) for p in pairs]
    rows, labels = [], {}
    cfg = JudgeCfg(method=args.method, principles_per_pair=args.principles)
    tokens = _prompt_tokens(build(cfg, const, pool=None, tokenizer=tok, seed=0), items, tok)

    init_ray()
    for actors in (1, 2):
        with Timer() as start:
            pool = EnginePool(actors, "vllm", path, engine_kwargs={"dtype": "auto"})
        judge = build(cfg, const, pool=pool, tokenizer=tok, seed=0, batch_size=64)
        with Timer() as t:
            out = judge.label(items)
        labels[actors] = [j.p_first for j in out]
        rows.append({"runner": f"judge on {actors} vLLM actor(s)", "pairs": len(items),
                     "prompt_tokens": tokens,
                     "seconds": t.seconds, "judgements_per_s": len(items) / t.seconds,
                     "startup_s": start.seconds})
        pool.shutdown()

    loop_pool = LocalPool(HfEngine(path, dtype="float32", batch_size=2))
    judge = build(cfg, const, pool=loop_pool, tokenizer=tok, seed=0, batch_size=1)
    loop = items[:args.loop_pairs]
    with Timer() as t:
        hf = [judge.label([it])[0].p_first for it in loop]  # one pair at a time
    rows.append({"runner": "transformers loop, one pair at a time", "pairs": len(loop),
                 "prompt_tokens": _prompt_tokens(judge, loop, tok),
                 "seconds": t.seconds, "judgements_per_s": len(loop) / t.seconds})
    base = rows[-1]["judgements_per_s"]
    for r in rows:
        r["x_loop"] = r["judgements_per_s"] / base
    diff = max(abs(a - b) for a, b in zip(hf, labels[1]))
    tbl = table(rows, ["runner", "pairs", "prompt_tokens", "seconds", "judgements_per_s",
                       "x_loop", "startup_s"])
    tbl += (f"\n\none judgement = {args.principles} principle(s) x 2 orders x 2 option tokens; "
            f"max |p(vLLM) - p(transformers)| on the shared pairs: {diff:.4f}; "
            f"prompt_tokens: all the judgements' prompts, before any prefix sharing")
    write("judge", {"model": args.model, "rows": rows, "max_label_difference": diff}, tbl,
          args.out)
    return 0


def _prompt_tokens(judge, items, tok) -> int:
    """Tokens in every prompt the judge sends for `items`, counted as if nothing were shared."""
    from cai_ray.engines.base import encode_request

    return sum(len(encode_request(tok, judge._request(it, p, o, None))) for it in items
               for p in judge.const.sample_judges(judge.seed, it.id, judge.k)
               for o in judge.orders)


if __name__ == "__main__":
    raise SystemExit(main())
