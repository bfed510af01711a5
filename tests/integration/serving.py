"""A `cai-ray serve` for tests: a foreground server process (its own local Ray cluster on
127.0.0.1, Ray Serve, vLLM) over a run directory of the tiny model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from cai_ray.cluster import free_port

KEY = "test-key-0123"
READY_S = 600


def make_run_dir(root: Path, tiny_model: str) -> Path:
    """A run directory as the pipeline leaves it after sft and reward: the tiny model as the SFT
    policy, and a value model with a seeded fresh head as the reward model."""
    import shutil

    import torch
    from transformers import AutoTokenizer

    from cai_ray.config import load_job
    from cai_ray.train.reward import load_value_model

    run = root / "run"
    shutil.copytree(tiny_model, run / "sft" / "model")
    torch.manual_seed(0)
    rm = load_value_model(tiny_model)
    torch.nn.init.normal_(rm.score.weight, std=0.5)
    rm.save_pretrained(run / "reward" / "model", safe_serialization=True)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(run / "reward" / "model")
    job = load_job("tiny", run_dir=str(run))
    done = {"status": "complete", "digest": "test"}
    (run / "manifest.json").write_text(json.dumps({
        "config": job.model_dump(), "name": job.name, "identity": "test",
        "stages": {"sft": done, "reward": done}}))
    return run


class Server:
    def __init__(self, run: Path, port: int, key_file: Path, log: Path, flags: tuple[str, ...]):
        self.port, self.base = port, f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "cai_ray.cli", "serve", str(run), "--port", str(port),
               "--api-key-file", str(key_file), "--request-timeout", "30", *flags]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     start_new_session=True)
        self.info = self._ready()

    def _ready(self) -> dict:
        got: list[str] = []
        reader = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()),
                                  daemon=True)
        reader.start()
        reader.join(READY_S)
        if not got or not got[0].strip():
            self.kill()
            raise AssertionError(f"server not ready in {READY_S} s; see {self.log.name}")
        return json.loads(got[0])

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "cai_ray.cli", "serve", *args, "--address",
                               self.info["ray_address"]], capture_output=True, text=True,
                              timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        subprocess.run(["pkill", "-9", "-f", "--", f"--port {self.port}"], check=False)


def run_server(tmp_path_factory, tiny_model, flags: tuple[str, ...] = ("--score", "--judge")):
    root = tmp_path_factory.mktemp("serve")
    run = make_run_dir(root, tiny_model)
    key_file = root / "key"
    key_file.write_text(KEY + "\n")
    srv = Server(run, free_port(), key_file, root / "server.log", flags)
    srv.run, srv.tiny = run, tiny_model
    yield srv
    if srv.proc.poll() is None:  # the last test stops it; this is for an early failure
        srv.cli("--stop")
    try:
        srv.proc.wait(60)
    finally:
        srv.kill()
