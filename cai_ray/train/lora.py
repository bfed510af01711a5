"""Low-rank adapters (peft) for every trainer: wrap a model, reach its transformer under the
wrapper, check target module names against a model before anything starts, export merged weights or
the adapter alone.

    model = apply(model, cfg["lora"], "CAUSAL_LM")   # only the adapters (and a reward head) train
    unwrap(engine.module)                            # the transformers model, adapters injected
"""

from __future__ import annotations

from pathlib import Path

from cai_ray.errors import InputError


def apply(model, lora: dict, task_type: str):
    """task_type: CAUSAL_LM (policy) or SEQ_CLS (reward model: its fresh score head trains in
    full beside the adapters)."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=lora["rank"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                     target_modules=list(lora["target_modules"]), task_type=task_type,
                     modules_to_save=["score"] if task_type == "SEQ_CLS" else None)
    return get_peft_model(model, cfg)


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


SCALING = "__scaling__"
PEFT_PREFIX = "base_model.model."


def adapter_payload(model) -> bytes:
    """What an engine needs to rebuild the policy from its base weights: every adapted module's
    A and B under the transformers weight's module name (`model.layers.0.self_attn.q_proj.lora_A`)
    and the scaling alpha / r, as the bytes of one safetensors file. A few percent of the model."""
    import torch
    from safetensors.torch import save

    peft_model = getattr(model, "module", model)
    scaling = None
    out = {}
    for name, tensor in adapter_state(peft_model).items():
        if ".lora_A." not in name and ".lora_B." not in name:
            continue  # modules_to_save (a reward head) never reach a policy engine
        module, kind = name.removeprefix(PEFT_PREFIX).rsplit(".", 2)[:2]
        out[f"{module}.{kind}"] = tensor.float().contiguous()
    for mod in peft_model.modules():
        if hasattr(mod, "scaling") and isinstance(mod.scaling, dict) and mod.scaling:
            scaling = next(iter(mod.scaling.values()))
            break
    if scaling is None:
        raise ValueError("adapter_payload: not a LoRA model")
    out[SCALING] = torch.tensor(float(scaling))
    return save(out)


def merged_pairs(base: str, payload: bytes):
    """(name, tensor) of the base model folder's weights with the adapter folded in: W + s B A for
    each adapted module (in float32, then the weight's dtype). Read from the folder's safetensors
    files one tensor at a time (memory-mapped), so the engine never holds a second model."""
    from safetensors import safe_open
    from safetensors.torch import load

    adapter = load(bytes(payload))
    scaling = float(adapter.pop(SCALING))
    files = sorted(Path(base).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{base}: no *.safetensors files (the adapter's base model)")
    used = set()
    for f in files:
        with safe_open(str(f), "pt") as st:
            for name in st.keys():
                t = st.get_tensor(name)
                module = name.removesuffix(".weight")
                if name.endswith(".weight") and f"{module}.lora_A" in adapter:
                    a, b = adapter[f"{module}.lora_A"], adapter[f"{module}.lora_B"]
                    t = (t.float() + scaling * (b.float() @ a.float())).to(t.dtype)
                    used.add(module)
                yield name, t
    missing = {k.rsplit(".", 1)[0] for k in adapter} - used
    if missing:
        raise ValueError(f"adapter modules not in {base}: {sorted(missing)[:3]}")


def module_names(model_path: str) -> set[str]:
    """The last part of every module name of a model, from its config alone (no weights loaded)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_path)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(cfg)
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
