"""One DeepSpeed worker base for every trainer: the config, the engine, the rendezvous, the gathered
state, checkpoints and the export. The SFT / reward / DPO trainers (train/core.py, inside Ray Train)
and the RL learner group (rl/learner.py, Ray actors) both build on it.

    ds = deepspeed_config(cfg, world)                  # ZeRO 0-3, offload, bf16, bucket sizes
    engine = build_engine(model, cfg, lr, world)
    with gathered(engine.module):                      # full parameters, also under ZeRO-3
        ...
    export_model(engine, out_dir)                      # save_pretrained on rank 0

A learner group forms its process group itself (`listen` on rank 0's node address, `join_group`
everywhere), so it spans nodes, and its store never listens on all interfaces.
"""

from __future__ import annotations

import datetime
import os
import shutil
import socket
from contextlib import contextmanager, nullcontext
from pathlib import Path

BUCKET_ELEMENTS = 50_000_000
"""ZeRO's reduce and all-gather buckets (elements). DeepSpeed's default, 5e8, allocates 2 GB buffers
in fp32: more than a 135M model's weights. 5e7 (200 MB) keeps communication in few calls."""
MMAP_THRESHOLD = str(1 << 20)
"""glibc allocations above this go through mmap and are handed back to the system when freed, so a
step's activations and logits do not stay resident in the heap. 1 MiB where memory is tightest
(the RL roles share the machine with the rollout engines; measured on SmolLM2-135M at micro-batch 4:
3.5 GB peak and 2.8 GB after a step without it, 3.2 and 2.2 GB with it). It costs time: every
mmap'd allocation is page-faulted in afresh."""
TRAINER_MMAP_THRESHOLD = str(16 << 20)
"""The same for a Ray Train trainer (sft, reward, dpo: a stage of its own). A DPO step on SmolLM2-135M
(8 rows x 256, fp32, 2 threads, forward + backward, one process) took 19.1 s at 1 MiB against
12.4-13.5 s at 16 MiB (peak RSS 4.2 -> 4.5 GB); in `cai-ray bench train` (2026-11-28) DPO went from
0.99x to 1.24x TRL's steps/s and SFT from 83.7 to 92.8 tokens/s, the trainer's peak RSS from 5.7 to
7.6 GB (DPO) and 4.7 to 5.7 GB (SFT)."""
TRAINER_ALLOCATOR = "auto"
"""The malloc of a Ray Train trainer's workers: `auto` (default) runs LoRA trainers with jemalloc
(the copy Ray ships) and full-weight trainers with glibc's; CAI_RAY_ALLOCATOR=glibc|jemalloc picks
one for all. Measured in Ray Train (`cai-ray bench train`, SmolLM2-135M, batch 4 x 256, fp32, 1
worker, ZeRO-2, 2026-11-29, AVX-512 machine; benchmarks/results/train_allocator.md):

    full SFT  glibc 115 tokens/s, peak RSS 5662 MB   jemalloc  96 tokens/s, 4580 MB
    LoRA SFT  glibc 143 tokens/s, peak RSS 4565 MB   jemalloc 163 tokens/s, 3031 MB

jemalloc keeps LoRA's many mid-sized activation buffers from fragmenting glibc's heap (faster and a
third smaller); for full SFT it saves a fifth of the memory but costs a sixth of the speed, so full
trainers keep glibc (with TRAINER_MMAP_THRESHOLD)."""


def deepspeed_config(cfg: dict, world_size: int, *, grad_accum: int | None = None) -> dict:
    """The DeepSpeed JSON config from a training section (a plain dict of TrainCfg's fields)."""
    zero: dict = {"stage": cfg["zero_stage"], "reduce_bucket_size": BUCKET_ELEMENTS,
                  "allgather_bucket_size": BUCKET_ELEMENTS}
    if cfg["offload_optimizer"]:
        zero["offload_optimizer"] = {"device": "cpu"}
    if cfg["offload_params"] and cfg["zero_stage"] == 3:
        zero["offload_param"] = {"device": "cpu"}
    if cfg["zero_stage"] == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
        zero["stage3_prefetch_bucket_size"] = BUCKET_ELEMENTS
    gas = cfg.get("grad_accum", 1) if grad_accum is None else grad_accum
    out = {
        "train_micro_batch_size_per_gpu": cfg["micro_batch_size"],
        "gradient_accumulation_steps": gas,
        "train_batch_size": cfg["micro_batch_size"] * gas * world_size,
        "gradient_clipping": cfg["grad_clip"],
        "zero_optimization": zero,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if cfg["precision"] == "bf16":
        out["bf16"] = {"enabled": True}
    if cfg["offload_optimizer"]:  # ZeRO-Offload needs DeepSpeed's CPU Adam
        out["optimizer"] = {"type": "AdamW", "params": {"lr": cfg["lr"],
                                                        "weight_decay": cfg["weight_decay"]}}
    return out


def build_engine(model, cfg: dict, lr: float, world_size: int, *, grad_accum: int | None = None):
    """deepspeed.initialize with the job's config; torch AdamW unless ZeRO-Offload asks for
    DeepSpeed's CPU Adam. AdamW is torch's fused kernel (CPU and CUDA): the default multi-tensor
    path allocates temporaries the size of the whole model at every step, and the fused one was
    also measured 5% faster on a SmolLM2-135M learner here."""
    import deepspeed
    import torch

    ds = deepspeed_config({**cfg, "lr": lr}, world_size, grad_accum=grad_accum)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = None if "optimizer" in ds else torch.optim.AdamW(
        params, lr=lr, weight_decay=cfg["weight_decay"], fused=True)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=opt, config=ds)
    if world_size == 1 and cfg["zero_stage"] == 0:
        # nothing to reduce: DeepSpeed would still flatten every gradient into buckets (~300 MB
        # of transients per backward at 135M parameters)
        engine.enable_backward_allreduce = False
    return engine


def _libc():
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def jemalloc_lib() -> str | None:
    """Ray's wheel ships jemalloc (ray/core/libjemalloc.so, for its own processes)."""
    import ray

    lib = Path(ray.__file__).parent / "core" / "libjemalloc.so"
    return str(lib) if lib.is_file() else None


def trainer_allocator(lora: bool) -> str:
    """glibc or jemalloc for a trainer (see TRAINER_ALLOCATOR)."""
    choice = os.environ.get("CAI_RAY_ALLOCATOR", TRAINER_ALLOCATOR).lower()
    if choice == "auto":
        return "jemalloc" if lora else "glibc"
    return choice


def trainer_env(lora: bool = False) -> dict[str, str]:
    """Environment of a Ray Train trainer's workers: jemalloc preloaded when trainer_allocator
    says so and the library is there."""
    if trainer_allocator(lora) != "jemalloc":
        return {}
    lib = jemalloc_lib()
    return {"LD_PRELOAD": lib} if lib else {}


def limit_heap(mmap_threshold: str = MMAP_THRESHOLD) -> None:
    """Large allocations through mmap in this process (see MMAP_THRESHOLD), and two malloc arenas
    (OpenMP's threads otherwise each grow an arena of their own, which fragment). glibc reads the
    variables when a process starts, so this sets them for the processes a trainer starts, and
    mallopt for itself."""
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", mmap_threshold)
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    libc = _libc()
    if libc is not None:
        libc.mallopt(-3, int(mmap_threshold))  # M_MMAP_THRESHOLD; also turns off its sliding
        libc.mallopt(-8, 2)  # M_ARENA_MAX


def trim_heap() -> None:
    """Hand freed heap pages back to the system (after an optimizer step: what a step's
    activations left in the heap would otherwise stay resident)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


# -- the rendezvous of a learner group ------------------------------------------------------------

def node_address() -> str:
    """This node's address as Ray knows it (127.0.0.1 on a local cluster)."""
    try:
        import ray

        return ray.util.get_node_ip_address()
    except Exception:  # outside Ray
        return "127.0.0.1"


def listen(host: str) -> socket.socket:
    """A listening socket on host (never all interfaces) and a free port: a TCPStore server takes
    it over (master_listen_fd), so there is no window in which another process takes the port."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(128)
    return sock


def store(host: str, port: int, rank: int, world: int, timeout_s: float = 600,
          listener: socket.socket | None = None):
    """A TCPStore: rank 0 serves it on `listener`, the others connect to host:port."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if rank == 0:
        if listener is None:
            raise ValueError("rank 0 serves the store: give it the listening socket")
        # the store owns the fd from here on (it closes it): detach, or Python closes it again
        # later, by then maybe another socket's number
        return dist.TCPStore(host, port, world, True, timeout, wait_for_workers=False,
                             master_listen_fd=listener.detach())
    return dist.TCPStore(host, port, world, False, timeout)


def join_group(host: str, port: int, rank: int, world: int, use_gpu: bool,
               listener: socket.socket | None = None, timeout_s: float = 600) -> None:
    """The default process group of a learner group, then DeepSpeed on it (gloo on CPU, NCCL on
    GPU). On loopback, gloo's own sockets stay on loopback too."""
    import torch.distributed as dist

    from cai_ray.platform import init_deepspeed_comm

    if dist.is_initialized():  # a script that formed its own group (world 1: gpu_check)
        if dist.get_world_size() != world:
            raise RuntimeError(f"a process group of {dist.get_world_size()} exists; this "
                               f"learner group needs {world}")
        return
    if host.startswith("127.") and not use_gpu:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.update({"MASTER_ADDR": host, "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": "0"})
    st = dist.PrefixStore("cai-ray-learner", store(host, port, rank, world, timeout_s, listener))
    dist.init_process_group("nccl" if use_gpu else "gloo", store=st, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s))
    init_deepspeed_comm(use_gpu)  # a no-op for the group; marks DeepSpeed's CPU op unbuilt


# -- parameters, checkpoints, export ---------------------------------------------------------------

def is_zero3(module) -> bool:
    params = list(module.parameters())
    return bool(params) and getattr(params[0], "ds_id", None) is not None


@contextmanager
def gathered(module):
    """Inside the block the module's parameters are whole (under ZeRO-3 every rank must enter: the
    gather is collective); elsewhere a no-op."""
    import deepspeed

    with (deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
          if is_zero3(module) else nullcontext()):
        yield module


def rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def export_model(engine, out_dir: str | Path, lora_save: str | None = None) -> None:
    """save_pretrained of the full model on rank 0 (safetensors); under ZeRO-3 the shards are
    gathered first. Written to a temporary folder and renamed. A model with LoRA adapters is
    saved merged (an ordinary model folder), or as the adapter alone with lora_save="adapter"."""
    from cai_ray.train import lora

    module = engine.module
    with gathered(module):
        if rank() == 0:
            out = Path(out_dir)
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if lora.is_peft(module) and lora_save == "adapter":
                module.save_pretrained(tmp, safe_serialization=True)
            else:
                plain = lora.merged_copy(module) if lora.is_peft(module) else module
                state = {k: v.detach().cpu().clone() for k, v in plain.state_dict().items()}
                plain.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            shutil.rmtree(out, ignore_errors=True)
            os.replace(tmp, out)
    barrier()


def save_state(engine, folder: str | Path, tag: str, client_state: dict | None = None) -> None:
    """The engine's full training state (weights, optimizer, scheduler, step) on every rank."""
    engine.save_checkpoint(str(folder), tag=tag, client_state=client_state or {})


def load_state(engine, folder: str | Path, tag: str) -> dict:
    """Restore what save_state wrote; returns its client state."""
    path, client = engine.load_checkpoint(str(folder), tag=tag)
    if path is None:
        raise FileNotFoundError(f"{folder}: no DeepSpeed checkpoint {tag!r}")
    return client or {}


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "generation_config.json", "vocab.json", "merges.txt")


def copy_tokenizer(src: str, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        f = Path(src) / name
        if f.exists() and not (Path(dst) / name).exists():
            shutil.copy(f, Path(dst) / name)

