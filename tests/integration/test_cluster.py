"""Cluster-level checks, each in its own Ray cluster started as a user would start it:
a two-node cluster on 127.0.0.1 (placement of engine actors and trainer workers), and a head
started with `ray start --head` that receives a submitted job (token authentication on)."""

import os
import secrets
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

TWO_NODES = textwrap.dedent("""
    import json, sys, tempfile
    from pathlib import Path
    from cai_ray.cluster import loopback_only
    loopback_only()
    import ray
    from ray.cluster_utils import Cluster
    from cai_ray import models
    from cai_ray.config.sections import SftCfg
    from cai_ray.engines.pool import EnginePool
    from cai_ray.rundir.files import write_jsonl_atomic
    from cai_ray.train.core import fit
    from cai_ray.train.sft import SftTask
    from cai_ray.train.spec import TrainSpec

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2,
                      "resources": {"node_a": 1}, "node_ip_address": "127.0.0.1"})
    cluster.add_node(num_cpus=2, resources={"node_b": 1}, node_ip_address="127.0.0.1")
    ray.init(address=cluster.address)
    cluster.wait_for_nodes()
    tiny = str(models.prepare("tiny-random-llama"))
    out = {}
    for strategy in ("STRICT_SPREAD", "STRICT_PACK"):
        pool = EnginePool(2, "hf", tiny, num_cpus=1, strategy=strategy, name=strategy)
        out[f"engines_{strategy}"] = pool.node_ids()
        pool.shutdown()
    import torch
    from cai_ray.config.rl import RlCfg
    from cai_ray.rl.experience import Experience, pad_right
    from cai_ray.rl.group import LearnerGroup
    from cai_ray.rl.learner import step_plan
    from cai_ray.rl.spec import LearnerSpec
    pool = EnginePool(2, "hf", tiny, num_cpus=1, strategy="STRICT_SPREAD", name="coloc",
                      shared={"CPU": 1})  # rl.colocate: a learner rank in each bundle
    rl = RlCfg(algorithm="ppo", num_workers=2, colocate=True)
    group = LearnerGroup(tiny, tiny, LearnerSpec.of(rl), seed=0,
                         colocate_with=pool)
    out["colocated_engines"] = pool.node_ids()
    out["colocated_learners"] = group.node_ids()
    group.shutdown()
    pool.shutdown()
    # a learner group of 2 ranks on 2 nodes (STRICT_SPREAD) trains together: the rendezvous is
    # rank 0's node address, and after a step both ranks hold the same, changed weights
    rl = RlCfg(algorithm="grpo", num_workers=2, placement_strategy="STRICT_SPREAD", lr=1e-2,
               zero_stage=2, micro_batch_size=2)
    group = LearnerGroup(tiny, None, LearnerSpec.of(rl), seed=0)
    out["learner_nodes"] = group.node_ids()
    out["learner_world"] = ray.get([a.__ray_call__.remote(
        lambda self: __import__("torch.distributed").distributed.get_world_size())
        for a in group.actors])
    out["learner_address"] = group.address[0]
    g = torch.Generator().manual_seed(0)
    resp, mask = pad_right([torch.randint(5, 200, (n,), generator=g).tolist()
                            for n in (4, 6, 3, 5, 6, 2, 4, 5)])
    prompts = [[7, 8, 9]] * 4 + [[10, 11]] * 4
    exp = Experience(prompts, resp, mask, torch.zeros(resp.shape), torch.arange(8.0),
                     torch.tensor([0] * 4 + [1] * 4), [0] * 8, ref_logp=torch.zeros(resp.shape),
                     advantages=torch.randn(8, 1) * mask)
    plans = step_plan([len(p) + int(m.sum()) for p, m in zip(prompts, mask)],
                      exp.group.tolist(), 2, None, 2, 1)
    def first_weights():
        return [w.tolist() for w in ray.get([a.__ray_call__.remote(
            lambda self: self.actor.module.model.embed_tokens.weight[:3, :4].clone())
            for a in group.actors])]
    before = first_weights()
    ray.get(group.train(exp, plans))
    after = first_weights()
    out["learners_agree"] = after[0] == after[1]
    out["learners_moved"] = after[0] != before[0]
    group.shutdown()
    tmp = Path(tempfile.mkdtemp())
    rows = [{"id": f"r{i}", "messages": [{"role": "user", "content": "hi"},
             {"role": "assistant", "content": "hello there"}]} for i in range(8)]
    write_jsonl_atomic(tmp / "data" / "train.jsonl", rows)
    write_jsonl_atomic(tmp / "data" / "eval.jsonl", rows[:2])
    cfg = SftCfg(num_workers=2, micro_batch_size=2, max_steps=2, placement_strategy="SPREAD",
                 checkpoint_every=100)
    fit(SftTask(), tiny, tmp / "data", TrainSpec.of(cfg), tmp / "out")
    out["nodes"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    from cai_ray.rundir.nodeview import unshared_nodes
    out["unshared"] = unshared_nodes(tmp / "run")  # both nodes are this machine: one disk
    out["probe_left"] = [p.name for p in tmp.iterdir() if p.name.startswith(".cai-ray-probe")]
    out["trainer_nodes"] = sorted(set(json.loads(l)["node"] for l in
                                  (tmp / "out" / "workers.jsonl").read_text().splitlines()))
    print("RESULT " + json.dumps(out))
    ray.shutdown()
    cluster.shutdown()
""")


@pytest.mark.slow  # its path also runs in CI elsewhere; see pyproject.toml
def test_two_nodes_spread_and_pack(tmp_path):
    res = subprocess.run([sys.executable, "-c", TWO_NODES], capture_output=True, text=True,
                         timeout=900, cwd=tmp_path)
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, res.stderr[-4000:]
    import json

    out = json.loads(line[0][7:])
    assert len(out["nodes"]) == 2
    assert len(set(out["engines_STRICT_SPREAD"])) == 2   # one engine actor on each node
    assert len(set(out["engines_STRICT_PACK"])) == 1     # both on one node
    assert len(out["trainer_nodes"]) == 2         # the two trainer workers spread too
    # rl.colocate: learner rank i on engine i's node, one pair per node
    assert out["colocated_learners"] == out["colocated_engines"]
    assert len(set(out["colocated_learners"])) == 2
    # a learner group spanning the two nodes trains as one data-parallel group
    assert len(set(out["learner_nodes"])) == 2 and out["learner_world"] == [2, 2]
    assert out["learners_agree"] and out["learners_moved"]
    # a plain run directory's disk is seen by both nodes (the probe ran on each), probe removed
    assert out["unshared"] == [] and out["probe_left"] == []


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_for_dashboard(port: int, proc, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ray start exited: {proc.stderr.read().decode()[-3000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2)
            return
        except OSError as exc:  # 401 (token) also means it is up
            if getattr(exc, "code", None) in (401, 403):
                return
            time.sleep(1)
    raise AssertionError("the Ray dashboard did not come up")


def test_submit_to_a_head_with_token_auth(tmp_path):
    import tempfile

    short = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))  # AF_UNIX paths: at most 107 bytes
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    port, agent, grpc, metrics, renv, gcs = _free_ports(6)  # another cluster may hold defaults
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # the head as from an activated venv:
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    # --block keeps `ray start` in the foreground: stopping its process group stops this head
    # and nothing else (`ray stop` would stop every Ray cluster on the machine).
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block",
         "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", f"--dashboard-port={port}",
         "--num-cpus=4", f"--port={gcs}", f"--dashboard-agent-listen-port={agent}",
         f"--dashboard-agent-grpc-port={grpc}", f"--metrics-export-port={metrics}",
         f"--runtime-env-agent-port={renv}", f"--temp-dir={short}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    _wait_for_dashboard(port, head)
    address = f"http://127.0.0.1:{port}"
    try:
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
        cai = [sys.executable, "-m", "cai_ray.cli"]
        # no token: refused, one clear line
        refused = subprocess.run(cai + ["jobs", "list", "--address", address],
                                 capture_output=True, text=True, env={**client_env,
                                                                      "RAY_AUTH_MODE": "token",
                                                                      "RAY_AUTH_TOKEN": "wrong"})
        assert refused.returncode == 2 and "cai-ray: error:" in refused.stderr, refused.stderr
        # with the token: the tiny job runs to success
        run = subprocess.run(cai + ["submit", "tiny", "--address", address, "--token-file",
                                    str(token), "--follow", "--", "--stages", "sl_cai",
                                    "--limit", "4", "--set", "engine.backend=hf",
                                    "--run-dir", str(tmp_path / "run")],
                             capture_output=True, text=True, env=client_env, timeout=900)
        assert run.returncode == 0, (run.stdout[-3000:], run.stderr[-3000:])
        assert "SUCCEEDED" in run.stdout
        assert (tmp_path / "run" / "sl_cai" / "data.jsonl").exists()
        bad = subprocess.run(cai + ["submit", "tiny", "--address", address, "--token-file",
                                    str(token), "--", "--set", "sl_cai.num_rounds=0"],
                             capture_output=True, text=True, env=client_env)
        assert bad.returncode == 2 and "sl_cai.num_rounds" in bad.stderr
    finally:
        import signal

        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
