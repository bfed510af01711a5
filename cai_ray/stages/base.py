"""The stage contract: what a stage of the method declares, so that the stage graph, the resource
check, `--stages`, the CLI help and the README's stage table all read one declaration.

    STAGE = register_stage(Stage(
        name="sft", about="fine-tune the policy on the revisions (SL-CAI)", run=run,
        sections=("model", "sft", "seed"), reads=lambda job: ("sft_data",),
        produces=("policy",), needs=lambda job: trainer_need(job.sft, "sft.num_workers"),
        check=check, key_figures=("train/loss_last",), instead={"sft_data": "set sft.data"}))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from cai_ray.config import JobConfig
    from cai_ray.constitution import Constitution
    from cai_ray.stages.context import Context


@dataclass
class Need:
    """What a stage holds of the cluster at once."""

    cpus: int = 0
    gpus: float = 0.0
    memory_gib: float = 0.0
    why: dict = field(default_factory=dict)  # {"cpus": "2 engine actor(s) x 1 CPU", ...}


def _no_inputs(job) -> tuple[str, ...]:
    return ()


def _nothing(job) -> Need:
    return Need()


@dataclass(frozen=True)
class Stage:
    name: str
    about: str
    """One line: what the stage does (the CLI help, the README's stage table)."""
    run: Callable[["Context"], dict]
    """Does the work in ctx.run.stage_dir(name); returns the figures of its result.json."""
    sections: tuple[str, ...] | Callable[["JobConfig"], tuple[str, ...]] = ()
    """Job sections (and top-level fields) its output depends on: a change reruns it (or a
    function of the job giving them, where they depend on its settings)."""
    reads: Callable[["JobConfig"], tuple[str, ...]] = _no_inputs
    """The artifacts it needs under this job's settings (the stage graph finds their makers)."""
    produces: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    """Files under the run directory that a complete run of it leaves (besides its result.json):
    a stage marked complete without them runs again."""
    check: Callable[["JobConfig", "Constitution", str], None] | None = None
    """Load-time checks (job, constitution, base model folder): InputError before anything
    starts."""
    needs: Callable[["JobConfig"], Need] = _nothing
    """What it holds at once (engine actors, trainer workers, a judge's actors)."""
    key_figures: tuple[str, ...] = ()
    """Keys of its result.json the run's summary shows."""
    instead: dict[str, str] = field(default_factory=dict)
    """How a user provides an input without the stage that makes it: {"sft_data": "set
    sft.data"} (the error line when nothing provides it)."""
    after: str | None = None
    """Where it goes in the order data flows: after this stage (default: last)."""
