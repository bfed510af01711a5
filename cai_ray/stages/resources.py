"""What a job asks of its cluster, against what the cluster has: checked before any actor starts.

A job that asks for more GPUs, memory or (on a running cluster) CPUs than there are would otherwise
start, touch the run directory, and then wait forever for placement groups Ray can never place, or
be killed for memory an hour in. Stages run one after the other; each declares what it holds at
once (Stage.needs, built from engine_need / trainer_need / plus here), and the job needs what its
largest stage needs.

    need(job)          -> Need(cpus, gpus, memory_gib, why)
    local_cpus(job)    -> the logical CPUs a local cluster is started with
    local_machine()    -> Have of this machine (what a local cluster gets)
    cluster_have(res)  -> Have from ray.cluster_resources() of a running cluster
    check(job, have)   raises InputError naming the fields to change
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cai_ray.errors import InputError
from cai_ray.stages.base import Need

ENGINE_PROCESS_GIB = 0.5
"""Resident memory of one CPU engine actor besides its KV cache (the vLLM process, its model and
scratch buffers): a lower bound."""

DATA_BYTES = 64 * 2**20
"""What a stage that trains nothing may write to the run directory (generations, labels,
reports): an upper bound for the default job's sizes."""

MEMORY_SHARE = 0.9
"""The share of a machine's memory the engines may ask for (the OS, Ray and the trainers keep the
rest)."""


@dataclass
class Have:
    cpus: float
    gpus: float
    memory_gib: float
    where: str  # "this machine", "the cluster at ADDRESS"
    cpus_are_logical: bool = False  # a local cluster is given the CPUs it needs (local_cpus)


def engine_need(e, what: str = "engine") -> Need:
    """Engine actors of an EngineCfg (None: none)."""
    if e is None:
        return Need()
    n = e.num_actors
    on_cpu = e.num_gpus_per_actor == 0
    mem = n * (e.kv_cache_gib + ENGINE_PROCESS_GIB) if on_cpu else 0.0
    return Need(cpus=math.ceil(n * e.num_cpus_per_actor), gpus=n * e.num_gpus_per_actor,
                memory_gib=mem,
                why={"cpus": f"{what}: {n} engine actor(s) x {e.num_cpus_per_actor} CPU",
                     "gpus": f"{what}: {n} engine actor(s) x {e.num_gpus_per_actor} GPU",
                     "memory_gib": f"{what}: {n} CPU engine actor(s) x ({e.kv_cache_gib} GiB "
                                   f"engine.kv_cache_gib + ~{ENGINE_PROCESS_GIB} GiB each)"})


def plus(a: Need, b: Need) -> Need:
    """Two needs held at once."""
    why = {k: " + ".join(x for x in (a.why.get(k), b.why.get(k)) if x) for k in
           ("cpus", "gpus", "memory_gib")}
    return Need(a.cpus + b.cpus, a.gpus + b.gpus, a.memory_gib + b.memory_gib, why)


def trainer_need(sec, what: str) -> Need:
    """Trainer workers (or learner ranks) of a training section: a CPU (and a GPU) each."""
    n = sec.num_workers
    return Need(cpus=n, gpus=n if sec.use_gpu else 0.0,
                why={"cpus": f"{what}: {n} worker(s)",
                     "gpus": f"{what}: {n} worker(s) with use_gpu" if sec.use_gpu else ""})


def stage_needs(job) -> dict[str, Need]:
    """What each requested stage holds at once (its Stage.needs)."""
    from cai_ray.stages import registry

    return {stage: registry.get(stage).needs(job) for stage in job.stages}


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


def local_cpus(job) -> int | None:
    """Logical CPUs of a local cluster: the job's ray.num_cpus, else enough for its largest stage
    (engines and trainers pin their threads to the physical cores themselves), and never fewer
    than the cores."""
    if job.ray.num_cpus or job.ray.address:
        return job.ray.num_cpus
    from cai_ray.platform import num_cores

    return max([num_cores()] + [n.cpus for n in stage_needs(job).values()])


# -- disk ---------------------------------------------------------------------------------------
# A training stage writes its model and keeps `keep_checkpoints` checkpoints, each with the fp32
# weights and Adam's two moments: about (1 + 4 x keep_checkpoints) x the model's size on disk (the
# default job's SFT on SmolLM2-135M measured 8.4x at keep_checkpoints 2).

def disk_need(job, stage: str, model: int) -> tuple[int, str]:
    """(bytes the stage may write at its peak, what they are) from the model's size and the
    stage's retention settings."""
    from cai_ray.config.sections import TrainCfg
    from cai_ray.rundir.disk import mb

    sec = getattr(job, stage, None)
    if not isinstance(sec, TrainCfg):
        return DATA_BYTES, "its data"
    keep = getattr(sec, "keep_checkpoints", 1)
    copies = 1 + 4 * keep + getattr(sec, "keep_policies", 0)  # rl keeps policies (no optimizer)
    if getattr(sec, "critic", None) or getattr(sec, "algorithm", "") == "ppo":
        copies *= 2  # a critic as large as the policy, with its own optimizer
    if getattr(sec, "lora", None):
        copies = 2 + keep  # adapters and their optimizer are small; the merged export is not
    return copies * model + DATA_BYTES, (f"the model ({mb(model)}), its export and "
                                         f"{keep} checkpoint(s) with optimizer state")
