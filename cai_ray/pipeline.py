"""Runs the stages of the method in order against a run directory.

Everything the job needs is loaded and validated first (constitution, prompts, model name), so a bad
input fails before the run directory is touched or an actor starts. Each stage's digest covers the
config sections it reads and the digest of the stage before it; with --resume a stage whose output is
complete under the same digest is skipped. A stage whose digest changed starts afresh (its old output
is moved to RUN_DIR/.previous/, not deleted).
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import logging
import math
import shutil
import sys
import time
import traceback
from pathlib import Path

from cai_ray.config import STAGES, JobConfig
from cai_ray.constitution import load_constitution
from cai_ray.errors import InputError
from cai_ray.prompts.sources import load_prompts
from cai_ray.rundir import RunDir
from cai_ray.stages.context import Context

log = logging.getLogger("cai_ray")

# stage name -> module in cai_ray.stages with SECTIONS and run(ctx) -> dict
STAGE_MODULES = {s: f"cai_ray.stages.{s}" for s in STAGES}
IDENTITY_SECTIONS = ("name", "model", "constitution", "prompts")
KEY_FIGURES = {
    "sl_cai": ("prompts", "sft_rows", "throughput/prompts_per_s"),
    "sft": ("train/loss_first", "train/loss_last", "eval/loss"),
    "preferences": ("pairs", "p_chosen_mean", "order_disagreement"),
    "reward": ("eval/accuracy", "train/loss_last"),
    "rl": ("algorithm", "reward_first", "reward_last", "kl_last"),
    "eval": ("harmless_win_rate_vs_sft", "helpful_win_rate_vs_sft"),
}


def stage_module(stage: str):
    try:
        return importlib.import_module(STAGE_MODULES[stage])
    except ModuleNotFoundError as exc:
        if exc.name == STAGE_MODULES[stage]:
            return None
        raise


def build_context(job: JobConfig, quiet: bool = False) -> Context:
    """Load and check every input; raises InputError before anything is written."""
    from cai_ray import models

    constitution = load_constitution(job.constitution.path)
    p = job.prompts
    red = load_prompts(p.red_team, limit=p.limit, max_chars=p.max_chars, on_too_long=p.on_too_long)
    if not len(red):
        raise InputError(f"prompts.red_team {p.red_team}: no usable prompts "
                         f"(read {red.counts.get('read', 0)}, counts {dict(red.counts)})")
    helpful = load_prompts(p.helpful, limit=p.limit, max_chars=p.max_chars,
                           on_too_long=p.on_too_long) if p.helpful else load_prompts([])
    if "sl_cai" in job.stages:
        constitution.require("critique_revision", job.constitution.path)
    if {"preferences", "eval"} & set(job.stages):
        constitution.require("judge", job.constitution.path)
    base = models.resolve(job.model.name)
    if "rl" in job.stages:
        check_rl(job, constitution)
    run = RunDir(job.run_dir)
    run.check_usable()
    return Context(job, run, constitution, red, helpful, base, quiet=quiet)


def check_rl(job: JobConfig, constitution) -> None:
    """What the RL stage will need, checked before anything starts: its reward source loads (a
    module:function imports and returns one number per completion), the judge has principles and
    its model resolves, and the reward model exists or an earlier stage of this run makes it."""
    from pathlib import Path

    from cai_ray import models
    from cai_ray.rl.rewards import check_reward, reward_kind

    rl = job.rl
    check_reward(rl.reward, rl.max_new_tokens)
    kind, _ = reward_kind(rl.reward)
    if kind == "judge":
        constitution.require("judge", job.constitution.path)
        if job.preferences.judge_model:
            models.resolve(job.preferences.judge_model)
    if kind == "model":
        if rl.reward_model:
            models.resolve(rl.reward_model)
        elif "reward" not in job.stages and not (Path(job.run_dir) / "reward" / "model" /
                                                  "config.json").exists():
            raise InputError(f"rl.reward model: no reward model in {job.run_dir}/reward/model "
                             f"and the reward stage is not in this run; add it to --stages, set "
                             f"rl.reward_model, or choose another rl.reward (judge, short, "
                             f"module:function)")


def platform_record(job: JobConfig) -> dict:
    """What the driver's machine decided for the run (engines on other nodes decide on theirs and
    report it in their info): the engine dtype and why, the cores, a GPU or not."""
    from cai_ray.platform import BF16_FLAGS, cpu_flags, engine_dtype, has_cuda, num_cores

    dtype, why = engine_dtype(job.model.dtype)
    return {"engine_dtype": dtype, "engine_dtype_reason": why, "cores": num_cores(),
            "cuda": has_cuda(), "cpu_bf16_flags": sorted(cpu_flags() & set(BF16_FLAGS)),
            "trainer_dtype": "float32 master weights"
            + (", bf16 compute" if "bf16" in {job.sft.precision, job.rl.precision} else "")}


def stage_digests(job: JobConfig, stages: list[str]) -> dict[str, str]:
    out, prev = {}, ""
    for s in STAGES:
        mod = stage_module(s)
        sections = getattr(mod, "SECTIONS", (s,)) if mod else (s,)
        prev = hashlib.sha256((prev + job.digest(*sections)).encode()).hexdigest()[:16]
        out[s] = prev
    return {s: out[s] for s in stages}


def identity(job: JobConfig) -> str:
    return job.digest(*IDENTITY_SECTIONS)


class RunLock:
    def __init__(self, path: Path):
        path.mkdir(parents=True, exist_ok=True)
        self.fh = open(path / ".lock", "w")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InputError(f"{path}: another cai-ray run is using this run directory") from None

    def release(self) -> None:
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def local_cpus(job: JobConfig) -> int | None:
    """Logical CPUs of a local cluster: the job's ray.num_cpus, else enough for its largest stage
    (RL holds the engines, the learner ranks and a judge's engines at once; engines and trainers
    pin their threads to the physical cores themselves), and never fewer than the cores."""
    if job.ray.num_cpus or job.ray.address:
        return job.ray.num_cpus
    from cai_ray.platform import num_cores

    e = job.engine
    engines = math.ceil(e.num_actors * e.num_cpus_per_actor)
    rl = engines + (0 if job.rl.colocate else job.rl.num_workers)
    if job.rl.reward == "judge":  # the judge's own engine actors run beside the rollout engines
        je = job.judge_engine() if job.preferences.judge_model else e
        rl += math.ceil(je.num_actors * je.num_cpus_per_actor)
    return max(num_cores(), rl, engines, job.sft.num_workers, job.reward.num_workers)


def run(job: JobConfig, *, resume: bool = False, force: bool = False, quiet: bool = False,
        ctx: Context | None = None) -> dict:
    """Run job.stages in order; return {stage: {status, seconds, result}}."""
    ctx = ctx or build_context(job, quiet=quiet)
    rd = ctx.run
    rd.check_identity(identity(job), job.name, force=force)
    digests = stage_digests(job, job.stages)
    lock = RunLock(rd.path)
    try:
        rd.open(identity(job), job.name, job.model_dump(mode="json"), platform_record(job))
        from cai_ray.cluster import init_ray

        init_ray(job.ray.address, local_cpus(job), job.ray.temp_dir)
        summary = {}
        for stage in job.stages:
            summary[stage] = run_stage(ctx, stage, digests[stage], resume)
            if summary[stage]["status"] == "failed":
                break
        return summary
    finally:
        lock.release()


def run_stage(ctx: Context, stage: str, digest: str, resume: bool) -> dict:
    rd = ctx.run
    mod = stage_module(stage)
    if mod is None:
        rd.mark(stage, status="not_implemented", digest=digest)
        return {"status": "not_implemented", "seconds": 0.0, "result": {}}
    if resume and rd.is_complete(stage, digest):
        return {"status": "skipped (complete)", "seconds": 0.0, "result": rd.result(stage)}
    rec = rd.stage_record(stage)
    if rec.get("digest") and rec["digest"] != digest and (rd.path / stage).exists():
        _move_aside(rd, stage)
    rd.mark(stage, status="running", digest=digest, started=time.time())
    t0 = time.time()
    try:
        result = mod.run(ctx)
    except InputError:
        rd.mark(stage, status="failed", seconds=time.time() - t0)
        raise
    except BaseException as exc:
        rd.mark(stage, status="failed", seconds=time.time() - t0,
                error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        traceback.print_exc(file=sys.stderr)
        return {"status": "failed", "seconds": time.time() - t0, "result": {},
                "error": f"{type(exc).__name__}: {exc}"}
    seconds = time.time() - t0
    result = {**result, "timing/stage_s": seconds}
    rd.write_result(stage, result)
    rd.mark(stage, status="complete", seconds=seconds, finished=time.time())
    return {"status": "complete", "seconds": seconds, "result": result}


def _move_aside(rd: RunDir, stage: str) -> None:
    dest = rd.path / ".previous" / f"{stage}-{int(time.time())}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(rd.path / stage), str(dest))
    log.warning("%s: config changed since the last run; old output moved to %s", stage, dest)


def format_summary(summary: dict) -> str:
    rows = [("stage", "status", "seconds", "key figures")]
    for stage, rec in summary.items():
        res = rec.get("result", {})
        figs = []
        for key in KEY_FIGURES.get(stage, ()):
            if key in res:
                v = res[key]
                figs.append(f"{key}={v:.3g}" if isinstance(v, float) else f"{key}={v}")
        rows.append((stage, rec["status"], f"{rec['seconds']:.1f}", ", ".join(figs)))
    total = sum(r["seconds"] for r in summary.values())
    rows.append(("total", "", f"{total:.1f}", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
