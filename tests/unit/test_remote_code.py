"""No model code runs unless the job asks: a model folder whose config.json has an auto_map (code
of its own) is refused at load time with exit 2, even with `y` on standard input (transformers
asks on a terminal-less stdin when trust_remote_code is left unset, and reads the answer); with
model.trust_remote_code: true the same folder's code does run, which shows the marker works.
Every from_pretrained / from_config call in cai_ray passes trust_remote_code explicitly."""

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

EVIL = """\
import os
from pathlib import Path

from transformers import LlamaConfig

Path(os.environ["CAI_RAY_TEST_MARKER"]).write_text("ran")


class EvilConfig(LlamaConfig):
    model_type = "llama"
"""


@pytest.fixture
def custom_code_model(tmp_path, tiny_model):
    folder = tmp_path / "evil-model"
    shutil.copytree(tiny_model, folder)
    (folder / "configuration_evil.py").write_text(EVIL)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def run_with_yes(tmp_path, model, *extra):
    marker = tmp_path / "marker"
    res = subprocess.run(
        [sys.executable, "-m", "cai_ray.cli", "run", "tiny", "--model", str(model),
         "--run-dir", str(tmp_path / "run"), "--dry-run", *extra],
        input="y\n" * 50, capture_output=True, text=True, timeout=120,
        env={**os.environ, "CAI_RAY_FORCE_CPU": "1", "CAI_RAY_TEST_MARKER": str(marker),
             "CAI_RAY_TRUST_REMOTE_CODE": "1"})  # an outer environment cannot allow it
    return res, marker


def test_custom_code_is_refused_and_never_runs_even_with_yes_on_stdin(tmp_path, custom_code_model):
    res, marker = run_with_yes(tmp_path, custom_code_model)
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "auto_map" in line and "configuration_evil.py" in line, line
    assert "model.trust_remote_code: true" in line, line
    assert not marker.exists(), "the model folder's code ran"
    assert not (tmp_path / "run").exists()


def test_the_same_folder_runs_its_code_when_the_job_allows_it(tmp_path, custom_code_model):
    res, marker = run_with_yes(tmp_path, custom_code_model, "--set", "model.trust_remote_code=true")
    assert marker.exists(), res.stderr[-2000:]


@pytest.mark.parametrize("config, expect", [
    ("{}", "no model_type"),
    ('{"model_type": "llama"}', "tokenizer does not load"),
    ("[1, 2]", "expected a JSON object, got a list"),
    ("{not json", "invalid JSON"),
])
def test_a_broken_model_folder_is_refused_at_load_time(tmp_path, config, expect):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(config)
    res = subprocess.run([sys.executable, "-m", "cai_ray.cli", "run", "tiny", "--model",
                          str(folder), "--run-dir", str(tmp_path / "run"), "--dry-run"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CAI_RAY_FORCE_CPU": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert line.startswith("cai-ray: error:") and "model.name" in line and expect in line, line


def test_a_hub_id_with_no_hub_and_no_cache_is_refused_at_load_time(tmp_path):
    res = subprocess.run([sys.executable, "-m", "cai_ray.cli", "run", "tiny", "--model",
                          "no-such-org/no-such-model", "--run-dir", str(tmp_path / "run"),
                          "--dry-run"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CAI_RAY_FORCE_CPU": "1", "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 2, res.stderr[-2000:]
    line = res.stderr.strip().splitlines()[-1]
    assert "not in the local Hugging Face cache" in line and "model.name" in line, line


LOADERS = {"from_pretrained", "from_config"}


def test_every_model_load_in_cai_ray_passes_trust_remote_code():
    missing = []
    for f in sorted((ROOT / "cai_ray").rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in LOADERS:
                if "trust_remote_code" not in {k.arg for k in node.keywords}:
                    missing.append(f"{f.relative_to(ROOT)}:{node.lineno}")
    assert not missing, missing
