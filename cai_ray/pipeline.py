"""Runs the stages of the method in order against a run directory.

Everything the job needs is loaded and validated first (constitution, prompts, model name, and the
stage graph: every requested stage's inputs are made by a stage of this run or complete in the run
directory), so a bad input fails before the run directory is touched or an actor starts. Each
stage's digest covers the config sections it reads and the digests of the stages whose output it
reads (cai_ray/stages/graph.py); with --resume a stage whose output is complete under the same
digest is skipped. A stage whose digest changed starts afresh (its old output is moved to
RUN_DIR/.previous/, not deleted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
import traceback
from pathlib import Path

from cai_ray.config import JobConfig
from cai_ray.constitution import load_constitution
from cai_ray.errors import InputError
from cai_ray.prompts.sources import load_prompts
from cai_ray.rundir import disk, nodeview
from cai_ray.rundir.layout import DiskWatch, RunDir, RunLock, open_run_dir
from cai_ray.rundir.storage import Syncer
from cai_ray.stages import graph, registry, resources
from cai_ray.stages.context import Context
from cai_ray.tracking import Tracking, console
from cai_ray.tracking import check as check_trackers

log = logging.getLogger("cai_ray")

IDENTITY_SECTIONS = ("name", "model", "constitution", "prompts")


def build_context(job: JobConfig, quiet: bool = False, force: bool = False,
                  resume: bool = False) -> Context:
    """Load and check every input, the run directory's owner included (another job's run
    directory needs `force`); raises InputError before anything is written. A cluster address
    is probed only when something will run on it (a resume with every stage complete joins
    nothing)."""
    from cai_ray import models

    job = job.model_copy(update={"stages": registry.canonical(job.stages)})
    models.allow_remote_code(job.model.trust_remote_code)
    constitution = load_constitution(job.constitution.path)
    p = job.prompts
    red = load_prompts(p.red_team, limit=p.limit, max_chars=p.max_chars, on_too_long=p.on_too_long)
    if not len(red):
        raise InputError(f"prompts.red_team {p.red_team}: no usable prompts "
                         f"(read {red.counts.get('read', 0)}, counts {dict(red.counts)})")
    helpful = load_prompts(p.helpful, limit=p.limit, max_chars=p.max_chars,
                           on_too_long=p.on_too_long) if p.helpful else load_prompts([])
    base = models.check(job.model.name, "model.name")
    for stage in job.stages:  # each stage's own load-time checks, and its adapters' targets
        st = registry.get(stage)
        if st.check is not None:
            st.check(job, constitution, base)
        check_lora(job, stage, base)
    if not joins_existing_cluster(job):  # a local cluster gets this machine's GPUs and memory
        resources.check(job, resources.local_machine())
    check_trackers(job)
    run = open_run_dir(job.run_dir)
    run.check_usable()
    plan = graph.resolve(job, _recorded(run))
    graph.check(job, plan, job.run_dir)
    if job.ray.address and not (resume and all(run.is_complete(
            s, plan.digests[s], registry.get(s).outputs) for s in job.stages)):
        from cai_ray.cluster import check_answers

        check_answers(job.ray.address)  # answers as a Ray cluster in seconds (Ray waits minutes)
    check_adapter_exports(job, plan)
    run.check_identity(identity(job), job.name, force=force)
    start = models.check(job.start_policy, "start_policy") if job.start_policy not in (
        None, "base") else base
    return Context(job, run, constitution, red, helpful, base, quiet=quiet, plan=plan,
                   start_policy=start)


def _recorded(run: RunDir) -> dict:
    """The manifest's stage records, a stage marked complete whose outputs are gone (or whose
    result.json is unreadable) taken as incomplete: nothing later reads what is not there."""
    out = {}
    for stage, rec in run.manifest().get("stages", {}).items():
        if rec.get("status") == "complete" and stage in registry.STAGES and not run.is_complete(
                stage, rec.get("digest"), registry.get(stage).outputs):
            rec = {**rec, "status": "incomplete"}
        out[stage] = rec
    return out


def check_lora(job: JobConfig, stage: str, base: str) -> None:
    """A training section's LoRA target modules exist in the model it trains."""
    from cai_ray.config.sections import TrainCfg

    sec = getattr(job, stage, None)
    if isinstance(sec, TrainCfg) and sec.lora:
        from cai_ray import models
        from cai_ray.train.lora import check_targets

        model = getattr(sec, "base_model", None)
        check_targets(models.resolve(model) if model else base, sec.lora.target_modules,
                      f"{stage}.lora.target_modules")


def check_adapter_exports(job: JobConfig, plan) -> None:
    """A model saved as the adapter alone (lora.save: adapter) is for the user, not for the stages
    after it: they load ordinary model folders."""
    from cai_ray.config.sections import TrainCfg

    for stage in job.stages:
        for art, src in plan.inputs.get(stage, {}).items():
            sec = getattr(job, src, None)
            if isinstance(sec, TrainCfg) and sec.lora and sec.lora.save == "adapter":
                raise InputError(f"{src}.lora.save: adapter, but {stage} reads {src}'s model "
                                 f"({art}); keep save: merged (the default) when later stages "
                                 f"use it, or run {src} on its own")


def platform_record(job: JobConfig) -> dict:
    """What the driver's machine decided for the run (engines on other nodes decide on theirs and
    report it in their info): the engine dtype and why, each trainer's compute precision and why
    (master weights and optimizer state are fp32 in every case), the cores, a GPU or not."""
    from cai_ray.platform import (
        BF16_FLAGS,
        cpu_flags,
        engine_dtype,
        has_cuda,
        num_cores,
        train_precision,
    )

    dtype, why = engine_dtype(job.model.dtype)
    trainers = {}
    for name in ("sft", "reward", "dpo", "rl"):
        sec = getattr(job, name)
        p, reason = train_precision(sec.precision, sec.use_gpu)
        trainers[name] = {"precision": p, "reason": reason}
    return {"engine_dtype": dtype, "engine_dtype_reason": why, "cores": num_cores(),
            "cuda": has_cuda(), "cpu_bf16_flags": sorted(cpu_flags() & set(BF16_FLAGS)),
            "trainer_precision": trainers, "master_weights": "float32"}


def identity(job: JobConfig) -> str:
    return job.digest(*IDENTITY_SECTIONS)


def run(job: JobConfig, *, resume: bool = False, force: bool = False, quiet: bool = False,
        ctx: Context | None = None) -> dict:
    """Run job.stages in order; return {stage: {status, seconds, result}}."""
    ctx = ctx or build_context(job, quiet=quiet, force=force, resume=resume)
    job = ctx.job  # its stages checked and in the order data flows
    rd = ctx.run
    digests = ctx.plan.digests
    if resume and all(rd.is_complete(s, digests[s], registry.get(s).outputs)
                      for s in job.stages):
        # nothing to run: answered from the manifest, with no cluster started or joined
        return {s: run_stage(ctx, s, digests[s], resume, None) for s in job.stages}
    todo = [s for s in job.stages if not (resume and rd.is_complete(
        s, digests[s], registry.get(s).outputs))]
    if todo:  # the first stage to run fits on the disk, before a cluster starts
        check_disk(ctx, todo[0])
    os.environ["CAI_RAY_TENSORBOARD"] = "1" if job.tracking.tensorboard else "0"  # to workers
    start_cluster(job)
    lock = RunLock(rd.path)
    sync, tracking, status = None, None, "FAILED"
    try:
        nodeview.announce(rd.path.resolve(), rd.remote)  # where actors on any node find the run
        if rd.remote is not None:  # everything the last run pushed: resume from the bucket
            n = rd.remote.pull(rd.path)
            log.warning("run directory %s: working copy %s (%d file(s) pulled)", rd.uri, rd.path, n)
            sync = Syncer(rd.remote, rd.path, job.ray.sync_every_s).__enter__()
        rd.open(identity(job), job.name, job.model_dump(mode="json"), platform_record(job))
        console.link_ray_logs(console.to_run_dir(rd.path))
        tracking = Tracking.open(job, rd)
        summary = {}
        for stage in job.stages:
            summary[stage] = run_stage(ctx, stage, digests[stage], resume, tracking)
            if summary[stage]["status"] == "failed":
                break
            if sync is not None:
                sync.push()  # each finished stage lands in the bucket at once
        status = "FAILED" if any(r["status"] == "failed" for r in summary.values()) \
            else "FINISHED"
        return summary
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        if tracking is not None:
            tracking.close(status)
        nodeview.withdraw()
        if sync is not None:
            sync.__exit__(None, None, None)
        lock.release()


def joins_existing_cluster(job: JobConfig) -> bool:
    """A job that joins a running cluster (ray.address, a submitted job, a caller's ray.init) is
    checked against that cluster's resources once connected; a local one against this machine."""
    import os

    if job.ray.address or os.environ.get("RAY_ADDRESS"):
        return True
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def start_cluster(job: JobConfig) -> None:
    """Start or join Ray, and refuse (exit 2) a job the cluster cannot hold, before the run
    directory is locked or written and before any actor starts."""
    import ray

    from cai_ray.cluster import init_ray

    existing = joins_existing_cluster(job)
    console.adopt_library_loggers()  # ray is imported: its console handler goes
    init_ray(job.ray.address, resources.local_cpus(job), job.ray.temp_dir,
             workers_to_console=console.verbose())
    if existing:
        where = job.ray.address or ray.get_runtime_context().gcs_address
        resources.check(job, resources.cluster_have(ray.cluster_resources(), where))
        check_shared(job.run_dir)


def check_shared(run_dir: str) -> None:
    """A plain run directory on a cluster of several nodes must be on a disk every node sees
    (every artifact a later stage reads goes there); a URI run directory always is."""
    from cai_ray.rundir import storage

    if storage.is_uri(run_dir):
        return
    missing = nodeview.unshared_nodes(Path(run_dir))
    if missing:
        raise InputError(f"--run-dir {run_dir}: not on storage that every node of the cluster "
                         f"sees ({len(missing)} node(s) cannot read it, e.g. {missing[0][:12]}); "
                         f"use a shared folder or an object-store URI (s3://bucket/run)")


def run_stage(ctx: Context, stage: str, digest: str, resume: bool,
              tracking: Tracking | None) -> dict:
    rd = ctx.run
    st = registry.get(stage)
    ctx.stage = stage
    if resume and rd.is_complete(stage, digest, st.outputs):
        return {"status": "skipped (complete)", "seconds": 0.0, "result": rd.result(stage)}
    console.stage_line(ctx.job.stages.index(stage) + 1, len(ctx.job.stages), stage, st.about)
    rec = rd.stage_record(stage)
    if rec.get("digest") and rec["digest"] != digest and (rd.path / stage).exists():
        _move_aside(rd, stage, ctx.job.keep_previous)
    check_disk(ctx, stage)
    rd.mark(stage, status="running", digest=digest, started=time.time())
    t0 = time.time()
    watch = DiskWatch(rd.path)
    tracked = tracking.stage(stage, digest) if tracking is not None else None
    try:
        with watch, tracked or contextlib.nullcontext():
            result = st.run(ctx)
    except InputError:
        _mark_failed(rd, stage, time.time() - t0)
        raise
    except BaseException as exc:
        full = None if isinstance(exc, (KeyboardInterrupt, SystemExit)) else \
            disk.disk_full(exc, rd.path, stage)
        _mark_failed(rd, stage, time.time() - t0, error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise
        if full is not None:
            raise full from None
        traceback.print_exc(file=sys.stderr)
        print(f"cai-ray: stage {stage} failed; the full logs: {rd.path / 'logs'} (driver.log, "
              f"and ray/: one file per process)", file=sys.stderr)
        return {"status": "failed", "seconds": time.time() - t0, "result": {},
                "error": f"{type(exc).__name__}: {exc}"}
    seconds = time.time() - t0
    disk_mb = watch.peak_bytes / 2**20
    result = {**result, "timing/stage_s": seconds, "disk/run_dir_peak_mb": disk_mb}
    try:
        rd.write_result(stage, result)
        rd.mark(stage, status="complete", seconds=seconds, finished=time.time(),
                disk_peak_mb=round(disk_mb, 1))
    except OSError as exc:  # the outputs are written; their record did not fit
        full = disk.disk_full(exc, rd.path, stage)
        if full is None:
            raise
        raise full from None
    if tracked is not None:
        tracked.finish(result)
    return {"status": "complete", "seconds": seconds, "result": result}


def check_disk(ctx: Context, stage: str) -> None:
    """The stage's estimated peak output fits on the run directory's file system (DiskFull,
    one line, before the stage starts)."""
    if ctx.run.remote is not None and not ctx.run.path.exists():
        return
    need, what = resources.disk_need(ctx.job, stage, disk.model_bytes(ctx.base_model))
    disk.check_free(ctx.run.path, need, stage, what)


def _mark_failed(rd: RunDir, stage: str, seconds: float, **fields) -> None:
    """Record the failure; on a full disk the manifest may not take it, and then it keeps
    `running`, which a resume treats the same way (the stage runs again)."""
    try:
        rd.mark(stage, status="failed", seconds=seconds, **fields)
    except OSError as exc:
        log.warning("%s: could not record the failure in the manifest (%s)", stage, exc)


def _move_aside(rd: RunDir, stage: str, keep: int = 1) -> None:
    """The stage's old output to RUN_DIR/.previous/<stage>-<time> (keep > 0), then only the newest
    `keep` of that stage's old outputs stay there (job.keep_previous)."""
    prev = rd.path / ".previous"
    if keep:
        dest = prev / f"{stage}-{time.time_ns()}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(rd.path / stage), str(dest))
        log.warning("%s: config changed since the last run; old output moved to %s", stage, dest)
    else:
        shutil.rmtree(rd.path / stage)
        log.warning("%s: config changed since the last run; old output deleted (keep_previous: 0)",
                    stage)
    old = sorted((p for p in prev.glob(f"{stage}-*") if p.name[len(stage) + 1:].isdigit()),
                 key=lambda p: int(p.name[len(stage) + 1:]))
    for p in old[:max(0, len(old) - keep)]:
        shutil.rmtree(p, ignore_errors=True)


def format_summary(summary: dict, run_dir: str | None = None) -> str:
    """The judge checks of the run (judge.gate) first, then the run's table: a row per stage
    (status, seconds, key figures), then the total, the peak disk use and where the run directory
    is."""
    from cai_ray.judges.gate import describe

    checks = [f"{stage}: {describe(rec['result']['judge_check'])}" for stage, rec in
              summary.items() if isinstance(rec.get("result", {}).get("judge_check"), dict)]
    rows = [("stage", "status", "seconds", "key figures")]
    for stage, rec in summary.items():
        res = rec.get("result", {})
        figs = []
        for key in registry.get(stage).key_figures:
            if key in res:
                v = res[key]
                figs.append(f"{key}={v:.3g}" if isinstance(v, float) else f"{key}={v}")
        rows.append((stage, rec["status"], f"{rec['seconds']:.1f}", ", ".join(figs)))
    total = sum(r["seconds"] for r in summary.values())
    peaks = {s: r["result"]["disk/run_dir_peak_mb"] for s, r in summary.items()
             if "disk/run_dir_peak_mb" in r.get("result", {})}
    top = max(peaks, key=peaks.get) if peaks else None
    where = [f"run directory {run_dir}"] if run_dir else []
    disk = [f"peak disk {peaks[top]:.0f} MB (during {top})"] if top else []
    rows.append(("total", "", f"{total:.1f}", "; ".join(where + disk)))
    widths = [max(len(r[i]) for r in rows[:-1]) for i in range(3)]
    return "\n".join(checks + ["  ".join(c.ljust(w) for c, w in zip(r, widths + [0])).rstrip()
                               for r in rows])
