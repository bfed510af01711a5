"""Connecting to Ray: a local cluster on 127.0.0.1 by default, or an existing one by address."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

from cai_ray.errors import InputError

log = logging.getLogger(__name__)

# Environment every Ray worker needs: quiet vLLM, DeepSpeed on CPU where there is no GPU, caches in
# folders we control (vLLM, DeepSpeed and Ray otherwise write under ~/.cache and /tmp).
WORKER_ENV_KEYS = ("CAI_RAY_CACHE", "CAI_RAY_TRUST_REMOTE_CODE", "TORCH_EXTENSIONS_DIR",
                   "VLLM_CACHE_ROOT", "DS_ACCELERATOR", "CAI_RAY_FORCE_CPU", "HF_HUB_OFFLINE",
                   "VLLM_LOGGING_LEVEL", "TOKENIZERS_PARALLELISM", "CAI_RAY_TENSORBOARD")


def default_env() -> None:
    from cai_ray.platform import has_cuda

    cache = os.environ.setdefault("CAI_RAY_CACHE", os.path.expanduser("~/.cache/cai-ray"))
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(cache, "torch_extensions"))
    os.environ.setdefault("VLLM_CACHE_ROOT", os.path.join(cache, "vllm"))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # its CPU warnings flood the log
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # Ray Train's controller polls its workers every 2 s: each fit's start and end wait for a
    # poll; 0.5 s costs one small call per worker and poll (a local cluster started here)
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    if not has_cuda():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def init_ray(address: str | None = None, num_cpus: int | None = None,
             temp_dir: str | None = None, dashboard: bool = True, autoscaler: bool = True,
             workers_to_console: bool = True) -> None:
    """Start (or join) Ray once per process. A local cluster binds to 127.0.0.1 and keeps Ray's
    token authentication as Ray configures it (on by default in 2.60); `dashboard` says whether it
    starts Ray's dashboard (the pipeline needs it, see below); `autoscaler=False` leaves out Ray's
    autoscaler monitor (see `_without_autoscaler`); `workers_to_console=False` leaves the actors'
    and workers' output in Ray's log files (RUN_DIR/logs/ray) instead of the driver's console."""
    import ray

    default_env()
    if ray.is_initialized():
        return
    env = {k: os.environ[k] for k in WORKER_ENV_KEYS if k in os.environ}
    kwargs: dict = {"runtime_env": {"env_vars": env}, "log_to_driver": workers_to_console,
                    "logging_level": logging.WARNING}
    if not address and os.environ.get("RAY_ADDRESS"):
        # Inside a submitted Ray job: its runtime env (working dir, env vars) already applies.
        ray.init(address=os.environ["RAY_ADDRESS"], logging_level=logging.WARNING)
        return
    if address:
        check_answers(address)
        if is_loopback(address.rsplit(":", 1)[0].removeprefix("ray://")):
            loopback_only()  # a cluster on this machine's 127.0.0.1: this node's address is too
        ray.init(address=address, **kwargs)
        return
    loopback_only()
    # workers import what the driver can from its working directory (rl.reward: module:function)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.getcwd(), os.environ.get("PYTHONPATH"))
                                        if p)
    # The dashboard (on 127.0.0.1) serves the state API that Ray Train's controller polls.
    with contextlib.nullcontext() if autoscaler else _without_autoscaler():
        ray.init(num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host="127.0.0.1",
                 _node_ip_address="127.0.0.1", _temp_dir=temp_dir, **kwargs)


@contextlib.contextmanager
def _without_autoscaler():
    """While ray.init starts a local head here: no autoscaler monitor, a Python process that a
    single local node, with nothing to scale, does not need (on a serving CPU node, CPU that the
    model's cores lose: serve/ingress.py). ray.init has no switch for it; `ray start` has
    (--no-monitor), which ends in this RayParams field, set here after RayParams' own
    constructor. A Ray without the field starts the monitor as before."""
    from ray._private import parameter

    init = parameter.RayParams.__init__

    def lean(self, *args, **kwargs):
        init(self, *args, **kwargs)
        if hasattr(self, "no_monitor"):
            self.no_monitor = True

    parameter.RayParams.__init__ = lean
    try:
        yield
    finally:
        parameter.RayParams.__init__ = init


ADDRESS_SCHEMES = ("ray://",)
"""ray.address: HOST:PORT (a head's GCS), ray://HOST:PORT (Ray Client), or Ray's own words."""
ADDRESS_WORDS = ("auto", "local")


def address_problem(address: str) -> str | None:
    """What is wrong with the form of a cluster address, or None (checked at load time)."""
    if address in ADDRESS_WORDS:
        return None
    scheme, sep, rest = address.rpartition("://")
    if sep and f"{scheme}://" not in ADDRESS_SCHEMES:
        return (f"scheme {scheme}:// is not a Ray address; give HOST:PORT (the head's GCS, "
                f"port 6379 by default), ray://HOST:PORT or auto")
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return "expected HOST:PORT with a port from 1 to 65535 (or ray://HOST:PORT, or auto)"
    return None


RAY_PROBES = {"": "/ray.rpc.NodeInfoGcsService/GetClusterId",
              "ray://": "/ray.rpc.RayletDriver/ClusterInfo"}
"""A call every Ray head answers (a GCS, or its Ray Client server), whatever its token says."""
NOT_RAY = ("UNIMPLEMENTED", "UNAVAILABLE", "DEADLINE_EXCEEDED")
"""What a gRPC call to a listener that is not Ray's ends in (an HTTP or other server, a proxy
that answers 404 for every path, one that never answers)."""


def check_answers(address: str | None, hint: str = "start its head or fix the address "
                  "(ray.address, --address)", timeout_s: float = 5.0) -> None:
    """A cluster address HOST:PORT (or ray://HOST:PORT) must accept a TCP connection and answer
    a Ray RPC within seconds; Ray itself waits minutes on an address nobody listens on, and on
    one where something else does. InputError (exit 2, with `hint`) if not; other forms ("auto",
    "local") are left to Ray."""
    scheme = "ray://" if (address or "").startswith("ray://") else ""
    host, sep, port = (address or "").removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or "://" in host:
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise InputError(f"Ray address {address}: no cluster answers there "
                         f"({exc.strerror or exc}); {hint}") from None
    if os.environ.get("RAY_USE_TLS", "").lower() in ("1", "true"):
        return  # a TLS cluster answers only after the handshake: left to Ray
    status = _ray_rpc_status(f"{host}:{port}", RAY_PROBES[scheme], timeout_s)
    if status in NOT_RAY:
        raise InputError(f"Ray address {address}: something listens there, but it does not "
                         f"answer as a Ray cluster ({status.lower()}); {hint}")


def _ray_rpc_status(target: str, method: str, timeout_s: float) -> str:
    """The gRPC status name of an empty call to `method` at target (OK when it succeeds;
    UNAUTHENTICATED from a Ray head whose token we did not send: still Ray)."""
    import grpc

    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary(method, request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        try:
            call(b"", timeout=timeout_s)
            return "OK"
        except grpc.RpcError as exc:
            return exc.code().name


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or localhost."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def ray_token_available() -> bool:
    """Whether Ray's own token settings give a token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token)."""
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or os.path.exists(os.path.expanduser("~/.ray/auth_token")))


def loopback_only() -> None:
    """Keep a local single-node cluster on 127.0.0.1. Ray turns 127.0.0.1 into the machine's
    routable address unless its single-node switch is off; the switch is read from the environment
    by Ray's child processes and from ray_constants by this one."""
    import ray._private.ray_constants as ray_constants

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` now (the OS's pick)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
