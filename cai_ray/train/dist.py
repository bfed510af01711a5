"""One DeepSpeed worker base for every trainer: the config, the engine, the rendezvous, the gathered
state, checkpoints and the export. The SFT / reward / DPO trainers (train/core.py, inside Ray Train)
and the RL learner group (rl/learner.py, Ray actors) both build on it.

    ds = deepspeed_config(spec, world)                 # ZeRO 0-3, offload, bucket sizes
    engine = build_engine(model, spec, lr, world)      # spec: a TrainSpec (train/spec.py)
    with compute(spec.precision, engine.device):       # bf16 autocast where the spec says
        loss = ...
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
"""ZeRO's reduce and all-gather buckets (elements): DeepSpeed's 5e8 allocates 2 GB buffers in fp32,
more than a 135M model's weights; 5e7 keeps communication in few calls."""
MMAP_THRESHOLD = str(1 << 20)
"""glibc allocations above this are mmap'd and handed back when freed, so a step's activations do
not stay resident: 1 MiB where memory is tightest (the RL roles share the machine with the engines).
Each such allocation is page-faulted in afresh (benchmarks/results/train_findings.md)."""
TRAINER_MMAP_THRESHOLD = str(16 << 20)
"""The same for a Ray Train trainer, which has the machine: speed over a lean heap
(benchmarks/results/train_findings.md)."""
TRAINER_ALLOCATOR = "auto"
"""A Ray Train trainer's malloc: auto runs LoRA trainers with jemalloc (Ray's copy) and full ones
with glibc; CAI_RAY_ALLOCATOR=glibc|jemalloc picks one (benchmarks/results/train_findings.md)."""


def deepspeed_config(spec, world_size: int, *, grad_accum: int | None = None,
                     lr: float | None = None) -> dict:
    """The DeepSpeed JSON config of a TrainSpec."""
    zero: dict = {"stage": spec.zero_stage, "reduce_bucket_size": BUCKET_ELEMENTS,
                  "allgather_bucket_size": BUCKET_ELEMENTS}
    if spec.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu"}
    if spec.offload_params and spec.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu"}
    if spec.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = False
        zero["stage3_prefetch_bucket_size"] = BUCKET_ELEMENTS
    gas = spec.grad_accum if grad_accum is None else grad_accum
    out = {
        "train_micro_batch_size_per_gpu": spec.micro_batch_size,
        "gradient_accumulation_steps": gas,
        "train_batch_size": spec.micro_batch_size * gas * world_size,
        "gradient_clipping": spec.grad_clip,
        "zero_optimization": zero,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if spec.offload_optimizer:  # ZeRO-Offload needs DeepSpeed's CPU Adam
        out["optimizer"] = {"type": "AdamW", "params": {"lr": spec.lr if lr is None else lr,
                                                        "weight_decay": spec.weight_decay}}
    return out


def compute(precision: str, device):
    """The forward passes' precision (a TrainSpec's, resolved): bf16 autocast for "bf16" (weights,
    gradients and optimizer state stay fp32: the master weights are the model's own), else
    nothing. Backward runs outside it, in the dtypes autocast chose."""
    import torch

    if precision != "bf16":
        return nullcontext()
    return torch.autocast(getattr(device, "type", str(device)), dtype=torch.bfloat16)


def build_engine(model, spec, lr: float, world_size: int, *, grad_accum: int | None = None):
    """deepspeed.initialize with the job's config; torch AdamW unless ZeRO-Offload asks for
    DeepSpeed's CPU Adam. AdamW is torch's fused kernel (CPU and CUDA): the default multi-tensor
    path allocates temporaries the size of the whole model at every step."""
    import deepspeed
    import torch

    ds = deepspeed_config(spec, world_size, grad_accum=grad_accum, lr=lr)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = None if "optimizer" in ds else torch.optim.AdamW(
        params, lr=lr, weight_decay=spec.weight_decay, fused=True)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, optimizer=opt,
                                      config=ds)
    if world_size == 1 and spec.zero_stage == 0:
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

