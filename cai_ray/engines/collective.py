"""A weight broadcast over a torch.distributed group of its own: rank 0 is the learner, ranks 1..N
the engines' model workers. NCCL between GPUs, gloo between CPUs: the same code.

The group is built straight from a TCPStore, so it never touches the default process group that
DeepSpeed (learner) or vLLM (engine) already own. Tensors travel as a few flat buffers, one per
dtype and at most `bucket_mb` each, in the order of a shared `meta` list:

    meta = tensor_meta(state)                      # [(name, shape, dtype)], learner side, once
    group = open_group(host, port, rank, world, "gloo", listener=sock)   # rank 0 serves the store
    send(group, state, meta)                       # rank 0, one bucket at a time
    for name, tensor in receive(group, meta, device):   # ranks 1..N, as each bucket arrives
        ...

Both sides hold at most one bucket beyond the model itself. Pure torch: no ray, vllm or deepspeed.
"""

from __future__ import annotations

import datetime
import gc
import socket
from math import prod

import torch
import torch.distributed as dist

from cai_ray.cluster import free_port  # noqa: F401  (a free port for a group's store)

Meta = list[tuple[str, list[int], str]]


def tensor_meta(state: dict[str, torch.Tensor]) -> Meta:
    return [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]


def buckets(meta: Meta, bucket_mb: float = 512) -> list[tuple[str, list[int]]]:
    """Indices of meta grouped into flat buffers: one dtype per buffer, at most bucket_mb each
    (a single larger tensor gets a buffer of its own)."""
    cap = bucket_mb * 2 ** 20
    out: list[tuple[str, list[int]]] = []
    size: dict[int, float] = {}
    open_by_dtype: dict[str, int] = {}
    for i, (_, shape, dtype) in enumerate(meta):
        nbytes = prod(shape) * torch.empty(0, dtype=getattr(torch, dtype)).element_size()
        j = open_by_dtype.get(dtype)
        if j is None or size[j] + nbytes > cap:
            j = open_by_dtype[dtype] = len(out)
            out.append((dtype, []))
            size[j] = 0
        out[j][1].append(i)
        size[j] += nbytes
    return out


def pack_bucket(state: dict[str, torch.Tensor], meta: Meta, idx: list[int],
                dtype: str) -> torch.Tensor:
    """One flat buffer of the tensors at idx, on their own device."""
    parts = []
    for i in idx:
        p = state[meta[i][0]].detach().reshape(-1)
        if str(p.dtype).removeprefix("torch.") != dtype:
            raise ValueError(f"weight sync: {meta[i][0]} is {p.dtype}, meta says {dtype}")
        parts.append(p)
    return torch.cat(parts)


def unpack_bucket(buf: torch.Tensor, meta: Meta, idx: list[int]):
    """(name, view) pairs of one flat buffer, shaped as meta says."""
    off = 0
    for i in idx:
        name, shape, _ = meta[i]
        n = prod(shape)
        yield name, buf[off:off + n].view(shape)
        off += n


def own_address(peer: str = "8.8.8.8") -> str:
    """This host's outward address (no packet is sent: a UDP socket only picks its route)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((peer, 9))
            return s.getsockname()[0]
    except OSError:  # no route: the name this host resolves to
        return socket.gethostbyname(socket.gethostname())


GROUP_TIMEOUT_S = 60.0
"""How long a member waits for the others, to form the group and in each collective call (one
bucket of at most a few hundred MB). A member that never comes costs the others this long, not
more: the learner then pushes through the object store (rl/weight_sync.py)."""


def open_group(host: str, port: int, rank: int, world: int, backend: str,
               timeout_s: float = GROUP_TIMEOUT_S, listener: socket.socket | None = None):
    """A process group of its own. backend: 'nccl' or 'gloo'. Rank 0 serves the store on
    `listener`, a socket it bound to host (never all interfaces); the others connect."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if rank == 0 and listener is not None:
        # the store owns (and closes) the fd: detach it, or the socket object closes the same
        # number again when collected, by then perhaps a newer socket's
        store = dist.TCPStore(host, port, world, True, timeout, wait_for_workers=False,
                              master_listen_fd=listener.detach())
    else:
        store = dist.TCPStore(host, port, world, is_master=rank == 0, timeout=timeout)
    store = dist.PrefixStore("cai-ray-weight-sync", store)
    if backend == "gloo":
        opts = dist.ProcessGroupGloo._Options()
        local = host if host == "127.0.0.1" or rank == 0 else own_address(host)
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=local)]
        opts._timeout = timeout
        return dist.ProcessGroupGloo(store, rank, world, opts)
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("weight sync over NCCL needs a CUDA device in every rank; "
                               "use ppo.weight_sync=gloo or object_store on CPUs")
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, world, opts)
    raise ValueError(f"weight sync backend {backend!r}: use 'nccl' or 'gloo'")


def _broadcast(group, buf: torch.Tensor) -> None:
    opts = dist.BroadcastOptions()
    opts.rootRank, opts.rootTensor = 0, 0
    group.broadcast([buf], opts).wait()
    if buf.is_cuda:
        torch.cuda.synchronize(buf.device)


def send(group, state: dict[str, torch.Tensor], meta: Meta, bucket_mb: float = 64) -> int:
    """Rank 0: broadcast state bucket by bucket; returns the bytes sent."""
    sent = 0
    for dtype, idx in buckets(meta, bucket_mb):
        buf = pack_bucket(state, meta, idx, dtype)
        _broadcast(group, buf)
        sent += buf.numel() * buf.element_size()
        del buf
    return sent


def receive(group, meta: Meta, device, bucket_mb: float = 64):
    """Ranks 1..N: yield (name, tensor) as each bucket arrives (a fresh buffer per bucket, so a
    consumer that keeps no references holds one bucket at a time). Consume it whole: every
    bucket is a collective call that rank 0 makes too."""
    for dtype, idx in buckets(meta, bucket_mb):
        buf = torch.empty(sum(prod(meta[i][1]) for i in idx), dtype=getattr(torch, dtype),
                          device=device)
        _broadcast(group, buf)
        yield from unpack_bucket(buf, meta, idx)


def drop_on_failure(owner, attr: str, fn):
    """fn(owner.<attr>) (the group); if it fails, the group is dropped before the error goes up,
    and nothing left (no traceback frame) still holds it: its sockets close, so the other members
    fail at once instead of waiting out the group's timeout."""
    try:
        return fn(getattr(owner, attr))
    except Exception as exc:  # noqa: BLE001 (re-raised below, without its frames)
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    setattr(owner, attr, None)
    gc.collect()
    raise RuntimeError(f"weight broadcast failed ({msg}); the group was dropped")
