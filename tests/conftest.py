"""Test tiers: tests/unit (no Ray, no vLLM start; seconds), tests/integration (a real local Ray
cluster, real vLLM and DeepSpeed on the tiny model; minutes). Marked `slow`: SmolLM2 runs, not in
CI. Marked `gpu`: needs CUDA, skipped here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CAI_RAY_SHARED_DATA", ROOT.parent / "shared" / "data"))

os.environ.setdefault("CAI_RAY_CACHE", str(Path.home() / ".cache" / "cai-ray"))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    for item in items:
        if "gpu" in item.keywords and not cuda:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))
    # the unit tier first: it fails in a minute where the integration tier takes twenty, and it
    # runs in a process where no test has started Ray yet
    items.sort(key=lambda item: 0 if f"{os.sep}unit{os.sep}" in str(item.path) else 1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not found (set CAI_RAY_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from cai_ray import models

    return str(models.prepare("tiny-random-llama"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (4 logical CPUs on 2 cores: engine actors bind
    their OpenMP threads to distinct cores themselves)."""
    import ray

    from cai_ray.cluster import init_ray

    init_ray(num_cpus=4)
    yield ray
    ray.shutdown()


def engine_generating(pid: int) -> bool:
    """Whether an engine actor's process is generating now: Ray titles a worker process
    ray::Class.method while it runs that method."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return b"EngineWorker.generate" in fh.read()
    except OSError:
        return False


@pytest.fixture
def is_generating():
    return engine_generating


@pytest.fixture(autouse=True)
def _cli_in_process_leaves_nothing(monkeypatch):
    """Tests that call the CLI's main() in process: what it sets for the process (the console's
    root handler and level, Python warnings as log records, the libraries' log-level variables)
    and user modules it imported (my_rewards.py of one tmp_path) end with the test."""
    import logging
    import sys

    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    for key in ("CAI_RAY_VERBOSE", "VLLM_LOGGING_LEVEL", "TRANSFORMERS_VERBOSITY", "WANDB_SILENT"):
        if key in os.environ:
            monkeypatch.setenv(key, os.environ[key])
        else:
            monkeypatch.delenv(key, raising=False)
    before = set(sys.modules)
    yield
    logging.captureWarnings(False)
    for name in set(sys.modules) - before:
        if name.startswith("my_"):
            del sys.modules[name]
