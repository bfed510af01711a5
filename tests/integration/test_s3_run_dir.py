"""A run directory on object storage: the tiny job against an S3-compatible server (moto's, started
here on 127.0.0.1), then resumed from the bucket alone on a "fresh machine" (an empty local
working copy): the stages the bucket holds are skipped, and a later stage reads their outputs."""

import os
import subprocess
import sys

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


def test_tiny_job_on_s3_then_resumed_from_the_bucket_alone(s3, tmp_path):
    import json

    fs, endpoint = s3
    uri = f"s3://runs/tiny?endpoint_override={endpoint}&scheme=http"
    res = cai("run", "tiny", "--run-dir", uri, "--stages", "sl_cai,sft", "--quiet",
              cache=tmp_path / "machine-a")
    assert res.returncode == 0, res.stderr[-4000:]
    files = listing(fs, "runs/tiny")
    assert {"manifest.json", "sl_cai/data.jsonl", "sl_cai/result.json", "sft/result.json",
            "sft/model/model.safetensors", "sft/model/config.json"} <= files, sorted(files)
    assert not any(f.endswith(".lock") or ".tmp" in f for f in files)
    with fs.open_input_stream("runs/tiny/manifest.json") as fh:
        manifest = json.loads(fh.read())
    assert {s: manifest["stages"][s]["status"] for s in ("sl_cai", "sft")} == \
        {"sl_cai": "complete", "sft": "complete"}

    # machine b: nothing local; the bucket is the whole run directory
    res = cai("run", "tiny", "--run-dir", uri, "--stages", "sl_cai,sft,preferences", "--resume",
              "--quiet", cache=tmp_path / "machine-b")
    assert res.returncode == 0, res.stderr[-4000:]
    assert res.stdout.count("skipped (complete)") == 2, res.stdout
    files = listing(fs, "runs/tiny")
    assert {"preferences/data.jsonl", "preferences/result.json"} <= files
    with fs.open_input_stream("runs/tiny/preferences/result.json") as fh:
        prefs = json.loads(fh.read())
    assert prefs["pairs"] > 0 and prefs["policy_model"] == "model"  # the SFT model from the bucket


def test_missing_bucket_is_exit_2_before_anything(s3, tmp_path):
    _, endpoint = s3
    res = cai("run", "tiny", "--run-dir", f"s3://no-such-bucket/x?endpoint_override={endpoint}"
              "&scheme=http", "--dry-run", cache=tmp_path / "c")
    assert res.returncode == 2
    assert "bucket 'no-such-bucket' does not exist" in res.stderr.splitlines()[-1]
    assert not (tmp_path / "c").exists()
