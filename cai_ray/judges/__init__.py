"""The constitutional judge as one component: the job file's `judge:` section (JudgeCfg) and one
factory that every caller uses (the preferences stage, the rl stage's judge reward, the eval
stage, `cai-ray eval judge`, `cai-ray bench judge`, `cai-ray serve --judge`).

Kinds (a registry: add one by adding a module and a line in KINDS):
    logprob     P(option token) of (A) and (B) after the judge prompt (feedback.Judge)
    generative  the judge writes its verdict; parsed, unparseable ones are ties and are counted
    http        logprob through an OpenAI-compatible server (engines/http_engine.py)

    setup = open_judge(job.judge, constitution, default_model=policy, seed=job.seed,
                       engine=job.engine, judge_engine=job.judge_engine(), shared_pool=pool,
                       actors=ctx.judge_pool)
    labels = setup.judge.label(items)
    setup.close()
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from cai_ray.feedback import Judge
from cai_ray.judges.generative import GenerativeJudge

KINDS: dict[str, type[Judge]] = {"logprob": Judge, "generative": GenerativeJudge, "http": Judge}


def check(cfg, where: str = "judge") -> None:
    """Load-time checks: the judge's model (or the http judge's tokenizer) resolves here, and an
    http judge's server answers."""
    from cai_ray import models
    from cai_ray.errors import InputError

    if cfg.model:
        try:
            models.resolve(cfg.model)
        except InputError as err:
            raise InputError(f"{where}.model: {err}") from None
    if cfg.kind == "http":
        from cai_ray.engines.http_engine import headers_for, served_model

        served_model(cfg.url, headers_for(cfg.api_key_env))


def settings(cfg, *, seed: int, principles_per_pair: int | None = None) -> dict:
    """The judge's keyword arguments from its section: what every caller's judge shares."""
    out = {"seed": seed, "principles_per_pair": principles_per_pair or cfg.principles_per_pair,
           "num_fewshot": cfg.num_fewshot, "both_orders": cfg.both_orders,
           "chain_of_thought": cfg.chain_of_thought,
           "cot_max_new_tokens": cfg.cot_max_new_tokens}
    if cfg.kind == "generative":
        out["verdict_max_new_tokens"] = cfg.verdict_max_new_tokens
    return out


def build(cfg, constitution, *, pool, tokenizer, seed: int, batch_size: int = 16,
          max_in_flight: int = 2, principles_per_pair: int | None = None) -> Judge:
    """One judge of cfg.kind over `pool` (an EnginePool, a LocalPool, or an http engine's pool)."""
    return KINDS[cfg.kind](pool, tokenizer, constitution,
                           **settings(cfg, seed=seed, principles_per_pair=principles_per_pair),
                           batch_size=batch_size, max_in_flight=max_in_flight)


@dataclass
class JudgeSetup:
    judge: Judge
    pool: Any
    model: str
    """The judge model's folder (its tokenizer), or the served model's for http."""
    owned: bool
    """Whether close() shuts the pool down (the judge's own actors)."""
    tokenizer: Any = None

    def close(self) -> None:
        if self.owned and self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def http_pool(cfg, tokenizer_path: str):
    """The pool an http judge runs on: one HttpEngine (the server at cfg.url) in process."""
    from cai_ray.engines.http_engine import HttpEngine
    from cai_ray.engines.local import LocalPool

    return LocalPool(HttpEngine(cfg.url, tokenizer_path, api_key_env=cfg.api_key_env))


def describe(cfg, default_model: str) -> str:
    if cfg.kind == "http":
        return f"http {cfg.url} ({cfg.model})"
    return f"{cfg.kind} {cfg.model or default_model}"


def open_judge(cfg, constitution, *, default_model: str, seed: int, engine, judge_engine=None,
               shared_pool=None, actors: Callable[[str], Any] | None = None,
               principles_per_pair: int | None = None) -> JudgeSetup:
    """The judge and what it runs on: a server (http), its own engine actors (cfg.model, made by
    `actors(model_folder)` on judge_engine's resources), or `shared_pool` (no cfg.model: the
    pool's model judges, `default_model` gives the tokenizer; without a shared pool, actors of
    default_model)."""
    from transformers import AutoTokenizer

    from cai_ray import models

    if cfg.kind == "http":
        path = models.resolve(cfg.model)
        pool, owned, e = http_pool(cfg, path), False, engine
    elif cfg.model:
        path = models.resolve(cfg.model)
        pool, owned, e = actors(path), True, judge_engine or engine
    elif shared_pool is not None:
        path, pool, owned, e = default_model, shared_pool, False, engine
    else:
        path, pool, owned, e = default_model, actors(default_model), True, engine
    try:
        tok = AutoTokenizer.from_pretrained(path)
        judge = build(cfg, constitution, pool=pool, tokenizer=tok,
                      seed=seed, batch_size=e.batch_size, max_in_flight=e.max_in_flight,
                      principles_per_pair=principles_per_pair)
    except Exception:
        if owned:
            pool.shutdown()
        raise
    return JudgeSetup(judge, pool, path, owned, tok)
