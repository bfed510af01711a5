"""What a job asks of its cluster, against what the cluster has: checked before any actor starts.

A job that asks for more GPUs, memory or (on a running cluster) CPUs than there are would otherwise
start, touch the run directory, and then wait forever for placement groups Ray can never place, or
be killed for memory an hour in. The need is that of the largest stage: stages run one after the
other, except that the RL stage holds its rollout engines, its learner ranks and a judge's engines
at once.

    need(job)          -> Need(cpus, gpus, memory_gib, why)
    local_machine()    -> Have of this machine (what a local cluster gets)
    cluster_have(res)  -> Have from ray.cluster_resources() of a running cluster
    check(job, have)   raises InputError naming the fields to change
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from cai_ray.errors import InputError

ENGINE_PROCESS_GIB = 0.5
"""Resident memory of one CPU engine actor besides its KV cache (the vLLM process, its model and
scratch buffers), a lower bound: SmolLM2-135M engines measured 0.9-1.3 GiB here."""

MEMORY_SHARE = 0.9
"""The share of a machine's memory the engines may ask for (the OS, Ray and the trainers keep the
rest)."""


@dataclass
class Need:
    cpus: int = 0
    gpus: float = 0.0
    memory_gib: float = 0.0
    why: dict = field(default_factory=dict)  # {"cpus": "the rl stage: ...", ...}


@dataclass
class Have:
    cpus: float
    gpus: float
    memory_gib: float
    where: str  # "this machine", "the cluster at ADDRESS"
    cpus_are_logical: bool = False  # a local cluster is given the CPUs it needs (pipeline.local_cpus)


def _engine_need(e, what: str) -> Need:
    n = e.num_actors
    on_cpu = e.num_gpus_per_actor == 0
    mem = n * (e.kv_cache_gib + ENGINE_PROCESS_GIB) if on_cpu else 0.0
    return Need(cpus=math.ceil(n * e.num_cpus_per_actor), gpus=n * e.num_gpus_per_actor,
                memory_gib=mem,
                why={"cpus": f"{what}: {n} engine actor(s) x {e.num_cpus_per_actor} CPU",
                     "gpus": f"{what}: {n} engine actor(s) x {e.num_gpus_per_actor} GPU",
                     "memory_gib": f"{what}: {n} CPU engine actor(s) x ({e.kv_cache_gib} GiB "
                                   f"engine.kv_cache_gib + ~{ENGINE_PROCESS_GIB} GiB each)"})


def _plus(a: Need, b: Need) -> Need:
    why = {k: " + ".join(x for x in (a.why.get(k), b.why.get(k)) if x) for k in
           ("cpus", "gpus", "memory_gib")}
    return Need(a.cpus + b.cpus, a.gpus + b.gpus, a.memory_gib + b.memory_gib, why)


def _trainer_need(sec, what: str) -> Need:
    n = sec.num_workers
    return Need(cpus=n, gpus=n if sec.use_gpu else 0.0,
                why={"cpus": f"{what}: {n} worker(s)",
                     "gpus": f"{what}: {n} worker(s) with use_gpu" if sec.use_gpu else ""})


def _judge_uses_own_engines(job) -> bool:
    return job.judge.kind != "http" and bool(job.judge.model)


def stage_needs(job) -> dict[str, Need]:
    """What each requested stage holds at once."""
    engines = _engine_need(job.engine, "engine")
    judge = (_engine_need(job.judge_engine(), "judge.engine") if _judge_uses_own_engines(job)
             else Need())
    out: dict[str, Need] = {}
    for stage in job.stages:
        if stage in ("sft", "reward", "dpo"):
            out[stage] = _trainer_need(getattr(job, stage), f"{stage}.num_workers")
        elif stage == "rl":
            need = engines
            if not job.rl.colocate:
                need = _plus(need, _trainer_need(job.rl, "rl.num_workers"))
            if job.rl.reward == "judge":
                need = _plus(need, judge)
            out[stage] = need
        elif stage in ("preferences", "eval"):
            out[stage] = _plus(engines, judge)
        else:  # sl_cai and any engine-only stage
            out[stage] = engines
    return out


def need(job) -> Need:
    """The largest stage's need, per resource (each with the stage that needs it most)."""
    best = Need()
    for stage, n in stage_needs(job).items():
        for key in ("cpus", "gpus", "memory_gib"):
            if getattr(n, key) > getattr(best, key):
                setattr(best, key, getattr(n, key))
                best.why[key] = f"the {stage} stage ({n.why.get(key) or key})"
    return best


def local_machine() -> Have:
    from cai_ray.platform import mem_total_gib, num_cores, num_gpus

    return Have(cpus=num_cores(), gpus=num_gpus(), memory_gib=mem_total_gib(),
                where="this machine", cpus_are_logical=True)


def cluster_have(resources: dict, address: str) -> Have:
    return Have(cpus=resources.get("CPU", 0.0), gpus=resources.get("GPU", 0.0),
                memory_gib=resources.get("memory", 0.0) / 2**30,
                where=f"the Ray cluster at {address}")


def check(job, have: Have) -> None:
    """InputError when the largest stage cannot fit on `have`."""
    n = need(job)
    if n.gpus > have.gpus:
        raise InputError(f"{n.why['gpus']} needs {n.gpus:g} GPU(s); {have.where} has "
                         f"{have.gpus:g}; lower engine.num_actors / engine.num_gpus_per_actor / "
                         f"num_workers, or set use_gpu: false")
    if have.memory_gib and n.memory_gib > MEMORY_SHARE * have.memory_gib:
        raise InputError(f"{n.why['memory_gib']} needs about {n.memory_gib:.1f} GiB of memory; "
                         f"{have.where} has {have.memory_gib:.1f} GiB; lower engine.kv_cache_gib "
                         f"or engine.num_actors")
    if not have.cpus_are_logical and n.cpus > have.cpus:
        raise InputError(f"{n.why['cpus']} needs {n.cpus} CPU(s); {have.where} has "
                         f"{have.cpus:g} (its placement groups could never be placed); lower "
                         f"engine.num_actors / engine.num_cpus_per_actor / num_workers or add "
                         f"nodes")
