"""The stage graph: what each stage reads, which stage provides it, and the digests resume uses.

Each stage declares what it produces (artifact names) and reads(job) (the artifacts it needs
under this job's settings; a user-given data set replaces the artifact it stands for). An artifact
a stage reads comes from the latest stage before it (registry order) that produces it and is
either requested in this run or complete in RUN_DIR under its current digest. A requested stage
with an input that nothing provides fails at load time, naming the input and how to provide it.

"policy" is the model being aligned: the newest of sft, dpo and rl. With no such stage in the run
or the run directory, a stage that reads it fails, unless the job names a starting point
(`start_policy: base` or a model), which is then used on purpose, not by a silent fallback.

    plan = resolve(job, manifest_stages)
    plan.inputs["rl"]    # {"policy": "sft", "reward_model": "reward"}
    plan.digests["rl"]   # covers rl's sections and the digests of sft and reward
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from cai_ray.errors import InputError
from cai_ray.stages.registry import STAGES

START = "start_policy"
"""The producer name of job.start_policy when it provides the policy."""
POLICY_HINT = "set start_policy (base, or a model) to start from a model on purpose"


def producers_of(artifact: str) -> list[str]:
    return [s for s, st in STAGES.items() if artifact in st.produces]


@dataclass
class Plan:
    inputs: dict[str, dict[str, str]] = field(default_factory=dict)
    """stage -> {artifact: producing stage (or START)}, for every stage whose inputs resolve."""
    digests: dict[str, str] = field(default_factory=dict)
    missing: dict[str, list[str]] = field(default_factory=dict)
    """requested stage -> artifacts nothing provides."""


def resolve(job, recorded: dict[str, dict]) -> Plan:
    """recorded: the manifest's stage records ({stage: {status, digest}}) of the run directory."""
    plan = Plan()
    available: dict[str, list[str]] = {}  # artifact -> stages providing it so far, in order
    for stage, st in STAGES.items():
        wanted = stage in job.stages
        inputs, missing = {}, []
        for art in st.reads(job):
            if available.get(art):
                inputs[art] = available[art][-1]
            elif art == "policy" and job.start_policy:
                inputs[art] = START
            else:
                missing.append(art)
        if missing:
            if wanted:
                plan.missing[stage] = missing
            continue
        plan.inputs[stage] = inputs
        plan.digests[stage] = _digest(job, st, inputs, plan.digests)
        rec = recorded.get(stage, {})
        current = rec.get("status") == "complete" and rec.get("digest") == plan.digests[stage]
        if wanted or current:
            for art in st.produces:
                available.setdefault(art, []).append(stage)
    return plan


def _digest(job, st, inputs: dict[str, str], digests: dict[str, str]) -> str:
    own = job.digest(*(st.sections(job) if callable(st.sections) else st.sections))
    ups = [f"{art}={digests.get(src) or job.start_policy}" for art, src in sorted(inputs.items())]
    return hashlib.sha256("|".join([own, *ups]).encode()).hexdigest()[:16]


def check(job, plan: Plan, run_dir: str) -> None:
    """One line naming the first requested stage whose inputs nothing provides."""
    order = list(STAGES)
    for stage in job.stages:
        for art in plan.missing.get(stage, ()):
            makers = [s for s in producers_of(art) if order.index(s) < order.index(stage)]
            how = STAGES[stage].instead.get(art) or (POLICY_HINT if art == "policy" else
                                                     "provide it")
            raise InputError(
                f"--stages {','.join(job.stages)}: {stage} reads {art}, which "
                f"{' / '.join(makers) or 'no stage'} makes: not in this run and not complete in "
                f"{run_dir} under the current config; add {makers[0] if makers else 'it'} to "
                f"--stages, or {how}")
