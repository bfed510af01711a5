"""A LoRA adapter on the wire, and its merge into base weights on the engine's side (RL with LoRA:
only the adapter travels; rl/weight_sync.py AdapterSync). Pure torch and safetensors, below engines/
and train/, which both use it.

    blob = pack(peft_state, scaling)          # learner: {module.lora_A, module.lora_B, __scaling__}
    for name, w in merged_pairs(base, blob):  # engine: W + scaling * B @ A, one tensor at a time
        ...
"""

from __future__ import annotations

from pathlib import Path

SCALING = "__scaling__"
PEFT_PREFIX = "base_model.model."


def pack(peft_state: dict, scaling: float) -> bytes:
    """peft's adapter state dict (get_peft_model_state_dict) as safetensors bytes, each tensor
    named after the transformers module it adapts: `model.layers.0.self_attn.q_proj.lora_A`."""
    import torch
    from safetensors.torch import save

    out = {}
    for name, tensor in peft_state.items():
        if ".lora_A." not in name and ".lora_B." not in name:
            continue  # modules_to_save (a reward head) never reach a policy engine
        module, kind = name.removeprefix(PEFT_PREFIX).rsplit(".", 2)[:2]
        out[f"{module}.{kind}"] = tensor.float().contiguous()
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
