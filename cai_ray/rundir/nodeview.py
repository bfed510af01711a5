"""The run directory seen from every node of the cluster. The driver works in one folder (the run
directory, or a URI's local working copy, storage.py); an actor on another machine cannot read it,
so every path of the run that crosses to an actor goes through this module:

    on_node(path)   # actor: a model or data folder to read, this node's copy (pulled if needed)
    node_dir(path)  # actor: a folder to write on this node (an export, a checkpoint)
    publish(path)   # actor: what was written there, to the run directory's storage
    share()         # driver, before remote work: what it just wrote, to the storage
    gather(path)    # driver, after: what other nodes published, into its copy

The driver announces the run in Ray's key-value store under this job's id, so every actor finds
it. On the driver's node, or for a plain folder (one node, or a shared disk, checked when the
cluster is joined), every function is the identity; paths outside the run directory are unchanged.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path

log = logging.getLogger("cai_ray")

NAMESPACE = "cai_ray"
_driver: dict = {}  # on the driver: {"root": Path, "remote": storage.Remote}


def _key() -> str:
    import ray

    return f"run/{ray.get_runtime_context().get_job_id()}"


def announce(root: Path, remote=None) -> None:
    """Driver: the run this job's actors work for (remote: the run directory's storage.Remote when
    it is a URI)."""
    import ray
    from ray.experimental import internal_kv

    _driver.update(root=Path(root), remote=remote)
    info = {"root": str(Path(root)), "uri": remote.uri if remote is not None else None,
            "node": ray.get_runtime_context().get_node_id()}
    internal_kv._internal_kv_put(_key(), json.dumps(info), overwrite=True, namespace=NAMESPACE)


def withdraw() -> None:
    import ray
    from ray.experimental import internal_kv

    _driver.clear()
    if ray.is_initialized():
        internal_kv._internal_kv_del(_key(), namespace=NAMESPACE)


def _info() -> dict | None:
    import ray

    if not ray.is_initialized():
        return None
    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(_key(), namespace=NAMESPACE)
    return json.loads(raw) if raw else None


def _elsewhere(path: str | Path) -> tuple[str, str] | None:
    """(uri, path relative to the run) when `path` is in a URI run directory and this process is
    on another node than the driver; None when the path can be used as it is."""
    info = _info()
    if not info or not info["uri"]:
        return None
    import ray

    if ray.get_runtime_context().get_node_id() == info["node"]:
        return None
    try:
        rel = Path(path).relative_to(info["root"])
    except ValueError:
        return None
    return info["uri"], str(rel)


def node_dir(path: str | Path) -> str:
    """Where this node writes (or reads) `path`: the path itself, or its place in this node's own
    working copy of the URI run directory."""
    where = _elsewhere(path)
    if where is None:
        return str(path)
    from cai_ray.rundir.storage import local_copy

    uri, rel = where
    return str(local_copy(uri) / rel)


def on_node(path: str | Path) -> str:
    """`path` readable on this node: from another node, this node's copy, with whatever it lacks
    (or holds at another size) pulled from the storage first."""
    where = _elsewhere(path)
    if where is None:
        return str(path)
    from cai_ray.rundir.storage import Remote, local_copy

    uri, rel = where
    t = time.time()
    n = Remote.open(uri).pull(local_copy(uri), prefix=rel)
    if n:
        log.info("pulled %d file(s) of %s to this node in %.1f s", n, rel, time.time() - t)
    return str(local_copy(uri) / rel)


def on_node_all(params: dict) -> dict:
    """on_node for every string value of a dict of parameters that names a path of the run."""
    return {k: on_node(v) if isinstance(v, str) and v.startswith(os.sep) else v
            for k, v in params.items()}


def publish(path: str | Path, replaces_siblings: bool = False) -> int:
    """After writing node_dir(path) on another node: send it to the run directory's storage (files
    the storage lacks or holds at another size). The identity on the driver's node.
    replaces_siblings: the folder (iter_7) supersedes the numbered folders beside it in this node's
    copy (iter_6, ...): they are removed here once it is sent (the storage keeps what the driver's
    retention keeps), so a node's copy holds one RL checkpoint, not every one."""
    where = _elsewhere(path)
    if where is None:
        return 0
    import shutil

    from cai_ray.rundir.storage import Remote, local_copy

    uri, rel = where
    n = Remote.open(uri).upload_tree(local_copy(uri), rel)
    if replaces_siblings:  # iter_7 supersedes iter_6, iter_5, ... (the same stem, a number)
        mine = local_copy(uri) / rel
        stem = mine.name.rstrip("0123456789")
        for other in mine.parent.iterdir():
            if other != mine and other.is_dir() and other.name.startswith(stem) and \
                    other.name[len(stem):].isdigit():
                shutil.rmtree(other, ignore_errors=True)
    return n


def share() -> None:
    """Driver: push its copy to the storage now, before actors on other nodes read what it just
    wrote (a stage's training data)."""
    remote = _driver.get("remote")
    if remote is not None:
        remote.push(_driver["root"])


def gather(path: str | Path) -> int:
    """Driver: bring into its copy what actors on other nodes published under `path` (only files
    it lacks: the driver's copy is the run's). Returns how many came down."""
    root, remote = _driver.get("root"), _driver.get("remote")
    if remote is None:
        return 0
    try:
        rel = Path(path).relative_to(root)
    except ValueError:
        return 0
    return remote.pull(root, prefix=str(rel), missing_only=True)


def train_storage(out_dir: Path, name: str) -> tuple[str, object | None]:
    """Ray Train's storage for a fit writing into out_dir: beside it on a plain run directory;
    on a URI run directory, the storage itself (.ray_train/<name>), so a worker restarted on any
    node finds the last checkpoint. (storage_path, storage_filesystem or None)."""
    remote = _driver.get("remote")
    if remote is None:
        return str(out_dir), None
    from cai_ray.rundir.storage import TRAIN_STORAGE

    return f"{remote.root}/{TRAIN_STORAGE}/{name}", remote.fs


def drop_train_storage(name: str) -> None:
    """After a fit succeeded: its checkpoints on the storage are no longer needed."""
    remote = _driver.get("remote")
    if remote is None:
        return
    from cai_ray.rundir.storage import TRAIN_STORAGE

    try:
        remote.fs.delete_dir(f"{remote.root}/{TRAIN_STORAGE}/{name}")
    except (FileNotFoundError, OSError) as exc:
        log.warning("could not remove Ray Train's checkpoints %s (%s)", name, exc)


def unshared_nodes(folder: Path, timeout_s: float = 60.0) -> list[str]:
    """The alive nodes (with CPUs or GPUs) that do not see `folder`'s storage: a probe file is
    written in its nearest existing parent and looked for from a task on every node. A plain
    run directory on several nodes must be on a disk they share."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive") and
             (n["Resources"].get("CPU") or n["Resources"].get("GPU"))]
    if len(nodes) <= 1:
        return []
    here = Path(folder).resolve()
    while not here.exists():
        here = here.parent
    probe = here / f".cai-ray-probe-{secrets.token_hex(6)}"
    probe.touch()
    try:
        seen = ray.get([ray.remote(num_cpus=0)(os.path.exists).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(str(probe))
            for n in nodes], timeout=timeout_s)
    finally:
        probe.unlink(missing_ok=True)
    return [n for n, ok in zip(nodes, seen) if not ok]
