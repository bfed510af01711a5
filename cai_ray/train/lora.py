"""Low-rank adapters (peft) for every trainer: wrap a model, reach its transformer under the
wrapper, check target module names against a model before anything starts, export merged weights or
the adapter alone.

    model = apply(model, spec.lora, "CAUSAL_LM")     # only the adapters (and a reward head) train
    unwrap(engine.module)                            # the transformers model, adapters injected
"""

from __future__ import annotations

from pathlib import Path

from cai_ray.errors import InputError


def apply(model, lora, task_type: str):
    """lora: a LoraSpec (train/spec.py). task_type: CAUSAL_LM (policy) or SEQ_CLS (reward model:
    its fresh score head trains in full beside the adapters)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules), task_type=task_type,
                     modules_to_save=["score"] if task_type == "SEQ_CLS" else None)
    return get_peft_model(model, cfg)


def prepare(model, spec, task_type: str = "CAUSAL_LM"):
    """A freshly loaded model as a trainer's TrainSpec asks: gradient checkpointing
    (non-reentrant) and LoRA adapters. With both, the frozen embeddings' output is made to
    require grad, so the checkpointed layers have a gradient to pass back."""
    if spec.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if spec.lora is not None:
        if spec.gradient_checkpointing:
            model.enable_input_require_grads()
        model = apply(model, spec.lora, task_type)
    return model


def unwrap(model):
    """A DeepSpeed engine's module, or a peft model's base model (adapters injected in place)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def is_peft(model) -> bool:
    return hasattr(getattr(model, "module", model), "get_base_model")


def merged_copy(model):
    """The model with its adapters folded into the weights, as a plain transformers model (a copy:
    the trained wrapper stays as it is)."""
    import copy

    return copy.deepcopy(getattr(model, "module", model)).merge_and_unload()


def adapter_state(model) -> dict:
    """The adapter's tensors only (peft's naming), detached on the CPU."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu() for k, v in
            get_peft_model_state_dict(getattr(model, "module", model)).items()}


def adapter_payload(model) -> bytes:
    """The adapter as the engines receive it (cai_ray/engines/adapter.py): every adapted module's A
    and B
    and the scaling alpha / r, as the bytes of one safetensors file. A few percent of the model."""
    from cai_ray.engines.adapter import pack

    peft_model = getattr(model, "module", model)
    scaling = None
    for mod in peft_model.modules():
        if hasattr(mod, "scaling") and isinstance(mod.scaling, dict) and mod.scaling:
            scaling = next(iter(mod.scaling.values()))
            break
    if scaling is None:
        raise ValueError("adapter_payload: not a LoRA model")
    return pack(adapter_state(peft_model), float(scaling))


def module_names(model_path: str) -> set[str]:
    """The last part of every module name of a model, from its config alone (no weights loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    from cai_ray.models import trust_remote_code

    cfg = AutoConfig.from_pretrained(model_path, trust_remote_code=trust_remote_code())
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=trust_remote_code())
    return {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}


def check_targets(model_path: str, targets: list[str], field: str) -> None:
    """A target module the model does not have fails at load time, naming the field."""
    names = module_names(model_path)
    bad = [t for t in targets if t not in names]
    if bad:
        linear = sorted(n for n in names if n.endswith("_proj") or n in ("c_attn", "c_proj",
                                                                         "query", "value"))
        raise InputError(f"{field}: {bad} not in {Path(model_path).name} (its projection modules: "
                         f"{', '.join(linear) or 'none found'})")
