"""The constitutional judge as one component: a method (how it decides) times a backend (where it
runs), both registries, and one factory every caller uses (preferences, the rl stage's judge
reward, eval, `cai-ray eval judge`, `cai-ray bench judge`, `cai-ray serve --judge`). Callers ask
this package; nothing outside it looks at a judge's backend.

    methods   logprob (option log-probs, Bai et al. 2022 sec. 4.1), generative (parsed verdict)
    backends  engines (engine actors of ours), http (any OpenAI-compatible server)

    setup = open_judge(job.judge, constitution, default_model=policy, seed=job.seed,
                       engine=job.engine, judge_engine=job.judge_engine(), shared_pool=pool,
                       actors=ctx.judge_pool)
    labels = setup.judge.label(items);  setup.close()

Add a method with register_method(name, JudgeSubclass), a backend with register_backend(...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from cai_ray.errors import InputError
from cai_ray.judges.backends import BACKENDS, Backend, register_backend  # noqa: F401
from cai_ray.judges.base import Judge, JudgeItem, Judgement  # noqa: F401
from cai_ray.judges.generative import GenerativeJudge
from cai_ray.judges.logprob import LogprobJudge
from cai_ray.models import trust_remote_code as trc

METHODS: dict[str, type[Judge]] = {}


def register_method(name: str, cls: type[Judge]) -> type[Judge]:
    METHODS[name] = cls
    return cls


register_method("logprob", LogprobJudge)
register_method("generative", GenerativeJudge)


def _backend(cfg) -> Backend:
    if cfg.backend not in BACKENDS:
        raise InputError(f"judge.backend: unknown backend {cfg.backend!r}; choose from "
                         f"{sorted(BACKENDS)}")
    return BACKENDS[cfg.backend]


def check(cfg, where: str = "judge") -> None:
    """Load-time checks: the method and backend exist, the backend's fields make sense (a
    server answers), and the judge's model resolves here."""
    from cai_ray import models

    if cfg.method not in METHODS:
        raise InputError(f"{where}.method: unknown method {cfg.method!r}; choose from "
                         f"{sorted(METHODS)}")
    _backend(cfg).check(cfg)
    if cfg.model:
        models.check(cfg.model, f"{where}.model")


def own_engines(cfg) -> bool:
    """Whether the judge runs on engine actors of ours (else on a server)."""
    return _backend(cfg).own_engines


def engine_section(job, separate: bool):
    """The EngineCfg of engine actors the judge holds beside the stage's own, or None: its own
    model's (judge.engine over engine), or with `separate` (the rl stage's judge reward, whose
    rollout engines' weights move) a copy of the policy's; none on a server or when it shares
    the stage's pool."""
    if not own_engines(job.judge):
        return None
    if job.judge.model:
        return job.judge_engine()
    return job.engine if separate else None


def settings(cfg, *, seed: int, principles_per_pair: int | None = None) -> dict:
    """The judge's keyword arguments from its section: what every caller's judge shares, and its
    method's own (Judge.options)."""
    return {"seed": seed, "principles_per_pair": principles_per_pair or cfg.principles_per_pair,
            "num_fewshot": cfg.num_fewshot, "both_orders": cfg.both_orders,
            "chain_of_thought": cfg.chain_of_thought,
            "cot_max_new_tokens": cfg.cot_max_new_tokens, **METHODS[cfg.method].options(cfg)}


def build(cfg, constitution, *, pool, tokenizer, seed: int, batch_size: int = 16,
          max_in_flight: int = 2, principles_per_pair: int | None = None) -> Judge:
    """One judge of cfg.method over `pool` (an EnginePool, a LocalPool, a server's pool)."""
    return METHODS[cfg.method](pool, tokenizer, constitution,
                               **settings(cfg, seed=seed, principles_per_pair=principles_per_pair),
                               batch_size=batch_size, max_in_flight=max_in_flight)


@dataclass
class JudgeSetup:
    judge: Judge
    pool: Any
    model: str
    """The judge model's folder (its tokenizer), or the served model's."""
    owned: bool
    """Whether close() shuts the pool down (the judge's own actors)."""
    tokenizer: Any = None

    def close(self) -> None:
        if self.owned and self.pool is not None:
            self.pool.shutdown()
            self.pool = None


def model_path(cfg, default_model: str) -> str:
    """The judge's model folder: judge.model resolved, else default_model (the policy's)."""
    from cai_ray import models

    return models.resolve(cfg.model) if cfg.model else default_model


def describe(cfg, default_model: str) -> str:
    return _backend(cfg).describe(cfg, cfg.model or default_model)


def start_actors(cfg, *, default_model: str, actors: Callable[[str], Any]):
    """Engine actors of the judge's own (judge.model, else default_model), or None when its
    backend runs elsewhere: the rl stage's judge reward, whose rollout engines' weights move."""
    return _backend(cfg).start_actors(cfg, model_path(cfg, default_model), actors)


def attach(cfg, constitution, *, pool, model_path: str, seed: int, batch_size: int = 16,
           max_in_flight: int = 2, principles_per_pair: int | None = None) -> Judge:
    """A judge on a pool the caller holds (start_actors'), or on its backend's server where it
    needs none (pool None)."""
    from transformers import AutoTokenizer

    if pool is None and own_engines(cfg):
        raise ValueError("judge: its engine actors were not started (judges.start_actors)")
    pool, _ = _backend(cfg).open(cfg, model_path, pool, None)
    return build(cfg, constitution, pool=pool, seed=seed, batch_size=batch_size,
                 max_in_flight=max_in_flight, principles_per_pair=principles_per_pair,
                 tokenizer=AutoTokenizer.from_pretrained(model_path, trust_remote_code=trc()))


def open_judge(cfg, constitution, *, default_model: str, seed: int, engine, judge_engine=None,
               shared_pool=None, actors: Callable[[str], Any] | None = None,
               principles_per_pair: int | None = None) -> JudgeSetup:
    """The judge and what it runs on. shared_pool: engine actors that hold the judge's model
    (the policy's pool when there is no judge.model); without one, engine actors are started
    with actors(model_folder) on judge_engine's resources (the engines backend), or the
    backend's server is used."""
    from transformers import AutoTokenizer

    path = model_path(cfg, default_model)
    pool, owned = _backend(cfg).open(cfg, path, shared_pool, actors)
    e = judge_engine if cfg.model and judge_engine is not None else engine
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trc())
        judge = build(cfg, constitution, pool=pool, tokenizer=tok, seed=seed,
                      batch_size=e.batch_size, max_in_flight=e.max_in_flight,
                      principles_per_pair=principles_per_pair)
    except Exception:
        if owned:
            pool.shutdown()
        raise
    return JudgeSetup(judge, pool, path, owned, tok)
