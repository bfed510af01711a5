"""Weight-sync buffers and the broadcast group (gloo between three real processes), streamed one
bucket at a time, with rank 0's store bound to 127.0.0.1 only."""

import multiprocessing as mp
import socket

import pytest
import torch

from cai_ray.engines import collective as C


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(3, 4, generator=g), "a.bias": torch.randn(4, generator=g),
            "b.half": torch.randn(5, generator=g).to(torch.bfloat16),
            "c.weight": torch.randn(2, 2, generator=g)}


def test_pack_unpack_round_trip_and_buckets():
    state = _state()
    meta = C.tensor_meta(state)
    assert meta[0] == ("a.weight", [3, 4], "float32")
    plan = C.buckets(meta)
    assert [d for d, _ in plan] == ["float32", "bfloat16"]  # one buffer per dtype
    assert plan[0][1] == [0, 1, 3]
    back = {}
    for dtype, idx in plan:
        back.update(C.unpack_bucket(C.pack_bucket(state, meta, idx, dtype), meta, idx))
    assert set(back) == set(state)
    for k in state:
        assert back[k].dtype == state[k].dtype and torch.equal(back[k], state[k])


def test_buckets_respect_the_cap():
    meta = [(f"w{i}", [256, 256], "float32") for i in range(5)]  # 256 KiB each
    plan = C.buckets(meta, bucket_mb=0.5)  # two tensors per bucket
    assert [idx for _, idx in plan] == [[0, 1], [2, 3], [4]]


def test_pack_refuses_a_dtype_that_differs_from_meta():
    state = _state()
    meta = C.tensor_meta(state)
    state["a.bias"] = state["a.bias"].double()
    dtype, idx = C.buckets(meta)[0]
    with pytest.raises(ValueError, match="a.bias"):
        C.pack_bucket(state, meta, idx, dtype)


def _listener(rank, port):
    """Rank 0 serves the store on a socket bound to 127.0.0.1; the others connect."""
    if rank != 0:
        return None
    listener = socket.socket()
    listener.bind(("127.0.0.1", port))
    listener.listen(16)
    return listener


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def _rank(rank, port, meta, q):
    group = C.open_group("127.0.0.1", port, rank, 3, "gloo", timeout_s=60,
                         listener=_listener(rank, port))
    if rank == 0:
        q.put(("listening", _listening_on(port)))
        q.put(("sent", C.send(group, _state(), meta, bucket_mb=0.0001)))
    else:
        got = {k: v.clone() for k, v in C.receive(group, meta, "cpu", bucket_mb=0.0001)}
        # by value: a tensor crosses a multiprocessing queue as a shared-memory handle, which is
        # gone if this process exits before the parent reads it (a flaky FileNotFoundError)
        q.put((rank, {k: (_bytes(v), str(v.dtype), list(v.shape))
                      for k, v in got.items()}))


def _listening_on(port: int) -> list[str]:
    """Local addresses with a listening TCP socket on port (from /proc/net/tcp*)."""
    out = []
    for path, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, p = local.split(":")
            if state == "0A" and int(p, 16) == port:  # 0A: LISTEN
                out.append("127.0.0.1" if addr == "0100007F" else addr)
    return out


def _three_ranks(target):
    """Ranks 0..2 of a group on a free loopback port, each a spawned process running
    target(rank, port, meta, queue); the processes and the queue they report to."""
    port, meta = C.free_port(), C.tensor_meta(_state())
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, port, meta, q)) for r in range(3)]
    for p in procs:
        p.start()
    return procs, q


def test_gloo_broadcast_between_three_processes():
    procs, q = _three_ranks(_rank)
    out = dict(q.get(timeout=120) for _ in range(4))
    for p in procs:
        p.join(timeout=60)
    assert out["listening"] == ["127.0.0.1"]  # the store never listens on all interfaces
    assert out["sent"] == sum(v.numel() * v.element_size() for v in _state().values())
    for r in (1, 2):
        for k, v in _state().items():
            raw, dtype, shape = out[r][k]
            assert (dtype, shape) == (str(v.dtype), list(v.shape)), (r, k)
            assert raw == _bytes(v), (r, k)


def test_group_formed_again_after_the_last_one_is_dropped():
    """The learner forms the broadcast group again after an engine dies: a fresh listening socket
    replaces the old one. The store owns the old socket's fd; if Python also kept it, collecting
    the old socket would close the same number, by then the new socket's (EBADF)."""
    import gc

    from cai_ray.train.dist import listen

    sock = listen("127.0.0.1")
    for _ in range(3):
        group = C.open_group("127.0.0.1", sock.getsockname()[1], 0, 1, "gloo", timeout_s=10,
                             listener=sock)
        buf = torch.arange(4.0)
        C._broadcast(group, buf)  # world 1: a no-op that needs a working group
        group = None
        gc.collect()
        sock = listen("127.0.0.1")  # the old socket object is collected here
        assert sock.getsockname()[1] > 0


class _Holder:
    group = None


def _rank_with_a_dead_peer(rank, port, meta, q):
    import os
    import time

    holder = _Holder()
    holder.group = C.open_group("127.0.0.1", port, rank, 3, "gloo", timeout_s=90,
                                listener=_listener(rank, port))
    if rank == 2:
        os._exit(0)  # an engine killed before the broadcast
    t = time.time()
    try:
        if rank == 0:
            time.sleep(1)
            C.drop_on_failure(holder, "group", lambda g: C.send(g, _state(), meta, 0.0001))
        else:
            C.drop_on_failure(holder, "group", lambda g: list(C.receive(g, meta, "cpu", 0.0001)))
        q.put((rank, "no error", time.time() - t, holder.group is None))
    except RuntimeError as exc:
        q.put((rank, str(exc), time.time() - t, holder.group is None))
    time.sleep(120)  # alive: only the dropped group can release the other member


def test_a_dead_member_fails_the_others_at_once_not_at_the_timeout():
    """Rank 2 dies; rank 0's send fails and drops the group, which closes its sockets, so rank 1
    (still waiting for data) fails within seconds instead of at the group's 90 s timeout."""
    procs, q = _three_ranks(_rank_with_a_dead_peer)
    try:
        out = {r: rest for r, *rest in (q.get(timeout=80) for _ in range(2))}
    finally:
        for p in procs:
            p.kill()
    for r in (0, 1):
        msg, seconds, dropped = out[r]
        assert "weight broadcast failed" in msg and dropped, (r, msg)
        assert seconds < 30, (r, seconds)
