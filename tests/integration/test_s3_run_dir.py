"""A run directory on object storage: the tiny job against an S3-compatible server (moto's, started
here on 127.0.0.1) on a Ray cluster of two nodes whose actors keep their own working copies, then
resumed from the bucket alone by a driver on a "fresh machine" (an empty local working copy): the
stages the bucket holds are skipped, and a later stage reads their outputs."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.integration

KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    os.environ.update(KEYS)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    import pyarrow.fs as pafs

    fs = pafs.S3FileSystem(endpoint_override=f"{host}:{port}", scheme="http",
                           allow_bucket_creation=True)
    fs.create_dir("runs")
    yield fs, f"{host}:{port}"
    server.stop()


def cai(*args, cache):
    env = {**os.environ, **KEYS, "CAI_RAY_FORCE_CPU": "1", "CAI_RAY_RUN_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "cai_ray.cli", *args], capture_output=True,
                          text=True, env=env, timeout=1500)


def listing(fs, root):
    import pyarrow.fs as pafs

    sel = pafs.FileSelector(root, recursive=True, allow_not_found=True)
    return {i.path[len(root) + 1:] for i in fs.get_file_info(sel) if i.type == pafs.FileType.File}


CLUSTER = textwrap.dedent("""
    import sys
    from cai_ray.cluster import loopback_only
    loopback_only()
    from ray.cluster_utils import Cluster
    # the head (the driver's node) runs no actor: every engine and trainer is on node b, whose
    # working copies of URI run directories are in its own folder (another machine's disk)
    from cai_ray.cluster import free_port
    port = free_port()  # another cluster (the suite's) may hold the dashboard's default
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "node_ip_address": "127.0.0.1", "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": port})
    c.add_node(num_cpus=4, node_ip_address="127.0.0.1", env_vars={"CAI_RAY_RUN_CACHE": sys.argv[1]})
    c.wait_for_nodes()
    print(c.address, flush=True)
    sys.stdin.read()  # until the test closes it
    c.shutdown()
""")


@pytest.fixture
def two_nodes(tmp_path):
    """A Ray cluster of two nodes on 127.0.0.1: (address, node b's working-copy folder)."""
    node_b = tmp_path / "node-b"
    proc = subprocess.Popen([sys.executable, "-c", CLUSTER, str(node_b)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env={**os.environ, **KEYS})
    address = proc.stdout.readline().strip()
    assert address.startswith("127.0.0.1:"), address
    yield address, node_b
    proc.stdin.close()
    proc.wait(timeout=120)


def test_tiny_job_on_two_nodes_through_s3_then_resumed_from_the_bucket_alone(s3, two_nodes,
                                                                              tmp_path):
    """Every artifact a later stage reads goes through the run directory's storage: the SFT
    workers on node b read their data from the bucket and publish the model there; the driver
    (on the head) gets it from the bucket; after node b lost its disk, RL's engines and learners
    there load the SFT model from the bucket again, and the learners publish their checkpoints.
    The engines are our transformers backend (the storage paths are the subject here)."""
    import json

    fs, endpoint = s3
    address, node_b = two_nodes
    uri = f"s3://runs/tiny?endpoint_override={endpoint}&scheme=http"
    res = cai("run", "tiny", "--run-dir", uri, "--stages", "sl_cai,sft", "--quiet",
              "--set", f"ray.address={address}", "--set", "engine.backend=hf",
              cache=tmp_path / "machine-a")
    assert res.returncode == 0, res.stderr[-4000:]
    files = listing(fs, "runs/tiny")
    assert {"manifest.json", "sl_cai/data.jsonl", "sl_cai/result.json", "sft/result.json",
            "sft/model/model.safetensors", "sft/model/config.json"} <= files, sorted(files)
    assert not any(f.endswith(".lock") or ".tmp" in f or f.startswith(".ray_train")
                   for f in files), sorted(files)  # Ray Train's checkpoints dropped after the fit
    with fs.open_input_stream("runs/tiny/manifest.json") as fh:
        manifest = json.loads(fh.read())
    assert {s: manifest["stages"][s]["status"] for s in ("sl_cai", "sft")} == \
        {"sl_cai": "complete", "sft": "complete"}
    [copy_b] = list(node_b.glob("*")) or [node_b / "(none)"]  # node b's own working copy
    assert (copy_b / "sft" / "data" / "train.jsonl").exists()  # pulled from the bucket
    assert (copy_b / "sft" / "model" / "model.safetensors").exists()  # exported there
    [copy_a] = list((tmp_path / "machine-a").iterdir())
    assert (copy_a / "sft" / "model" / "model.safetensors").exists()  # gathered by the driver

    # machine c: nothing local; the bucket is the whole run directory, and node b lost its disk
    shutil.rmtree(node_b)
    res = cai("run", "tiny", "--run-dir", uri, "--stages", "sl_cai,sft,rl", "--resume",
              "--quiet", "--set", f"ray.address={address}", "--set", "engine.backend=hf",
              "--set", "rl.reward=share:aeiou", cache=tmp_path / "machine-c")
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.count("skipped (complete)") == 2, res.stdout
    files = listing(fs, "runs/tiny")
    [copy_b] = list(node_b.glob("*")) or [node_b / "(none)"]
    assert (copy_b / "sft" / "model" / "model.safetensors").exists()  # node b pulled it again
    # RL's learners (on node b) wrote their checkpoints there and published them; the driver
    # made the final model from what it gathered
    assert (copy_b / "rl" / "checkpoints" / "iter_2" / "policy" / "model.safetensors").exists()
    assert not (copy_b / "rl" / "checkpoints" / "iter_1").exists()  # superseded: not kept there
    assert {"rl/model/model.safetensors", "rl/checkpoints/iter_2/trainer_state.json",
            "rl/checkpoints/iter_2/policy/model.safetensors"} <= files
    [copy_c] = list((tmp_path / "machine-c").iterdir())
    assert (copy_c / "rl" / "model" / "model.safetensors").exists()


def test_missing_bucket_is_exit_2_before_anything(s3, tmp_path):
    _, endpoint = s3
    res = cai("run", "tiny", "--run-dir", f"s3://no-such-bucket/x?endpoint_override={endpoint}"
              "&scheme=http", "--dry-run", cache=tmp_path / "c")
    assert res.returncode == 2
    assert "bucket 'no-such-bucket' does not exist" in res.stderr.splitlines()[-1]
    assert not (tmp_path / "c").exists()


def test_eval_on_a_uri_without_a_run_is_exit_2(s3, tmp_path):
    fs, endpoint = s3
    res = cai("eval", f"s3://runs/nothing-here?endpoint_override={endpoint}&scheme=http",
              cache=tmp_path / "c")
    assert res.returncode == 2
    assert "no " in res.stderr.splitlines()[-1] and "manifest.json" in res.stderr.splitlines()[-1]
    res = cai("eval", f"s3://no-such-bucket/x?endpoint_override={endpoint}&scheme=http",
              cache=tmp_path / "c")
    assert res.returncode == 2 and "does not exist" in res.stderr.splitlines()[-1]
