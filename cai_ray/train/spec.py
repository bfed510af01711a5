"""What a trainer worker receives across the Ray boundary: frozen, typed values built once from
the job's training section (sft, reward, dpo, or rl's learner).

    spec = TrainSpec.of(job.sft)                         # every setting resolved here, once
    fit(SftTask(max_len=512), model, data_dir, spec, out_dir)
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace


@dataclass(frozen=True)
class LoraSpec:
    rank: int = 16
    alpha: float = 32
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    save: str = "merged"  # merged | adapter


@dataclass(frozen=True)
class TrainSpec:
    """DeepSpeed, the optimizer, the schedule and checkpoints of one trainer (TrainCfg's fields,
    documented there)."""

    num_workers: int = 1
    use_gpu: bool = False
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    precision: str = "fp32"
    """fp32 or bf16 (resolved from `auto` by `of`): the forward passes' autocast dtype."""
    precision_reason: str = ""
    micro_batch_size: int = 4
    grad_accum: int = 1
    lr: float = 1e-5
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    grad_clip: float = 1.0
    epochs: int = 1
    max_steps: int | None = None
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    max_failures: int = 1
    placement_strategy: str = "PACK"
    group_by_length: bool = True
    gradient_checkpointing: bool = False
    lora: LoraSpec | None = None
    plugins: tuple[str, ...] = ()
    """The job's plugins, imported by every worker before it builds anything."""

    @classmethod
    def of(cls, section, **over) -> "TrainSpec":
        """From a TrainCfg (or any object with its fields); `over` replaces resolved values (the
        RL learner's zero stage, a learner's grad_accum)."""
        names = {f.name for f in fields(cls)} - {"lora", "plugins"}
        values = {n: getattr(section, n) for n in names if hasattr(section, n)}
        lora = getattr(section, "lora", None)
        if lora is not None:
            values["lora"] = LoraSpec(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout,
                                      target_modules=tuple(lora.target_modules), save=lora.save)
        from cai_ray.platform import train_precision

        values["precision"], values["precision_reason"] = train_precision(
            values.get("precision", "fp32"), values.get("use_gpu", False))
        return replace(cls(**values), **over)
