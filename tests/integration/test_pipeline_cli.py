"""The command line end to end on the tiny job: real Ray, vLLM and DeepSpeed, real files."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from tracking_checks import check_mlflow, check_wandb, start_mlflow

from cai_ray.prompts.sources import SHARED_DATA
from cai_ray.rundir.files import read_jsonl

pytestmark = pytest.mark.integration

CONSOLE_LINES = 16
"""The resumed tiny job's console, at most, as a terminal shows it: the tracking line, a line per
stage run (5), the judge check's warning (tiny's judge.gate: warn), the summary (the judge check,
header, 6 stages, total). Progress bars are redrawn in place and cleared when done. Before the
quiet console: 73 lines through rl alone."""


def cai(*args, timeout=1200):
    """Output as bytes, decoded here: text=True would turn each progress-bar refresh (a \r)
    into a line of its own, which a terminal does not show."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    res = subprocess.run([sys.executable, "-m", "cai_ray.cli", *args], capture_output=True,
                         timeout=timeout, env=env)
    res.stdout, res.stderr = (b.decode("utf-8", "replace") for b in (res.stdout, res.stderr))
    return res


STAGES = ("sl_cai", "sft", "preferences", "reward", "rl", "eval")


def kill_driver_when(run_args: list[str], ready, log_path, timeout: float = 900) -> None:
    """Start `cai-ray run ...` in its own process group, SIGKILL the whole group (driver, its Ray
    cluster, every actor) once ready() holds: as if the machine running the driver died."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cai_ray.cli", *run_args], stdout=log,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.time() + timeout
    while not ready() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.3)
    assert proc.poll() is None, f"the run ended before the kill point: {log_path}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


@pytest.fixture
def mlflow_server(tmp_path):
    proc, uri = start_mlflow(tmp_path)
    yield uri
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(30)


def test_tiny_job_every_stage_driver_killed_then_resumed(tmp_path, mlflow_server):
    """The tiny job through all six stages, with its driver killed mid-SFT (after sl_cai finished)
    and the run finished by `--resume`: sl_cai's output is kept byte for byte, nothing is lost or
    duplicated, every stage completes once. Tracked in a real MLflow server and a W&B offline
    run: the resume goes on in the same runs, with each step once. The console shows the job:
    one line per stage, warnings and the summary, not its libraries' logs."""
    run = tmp_path / "run"
    track = ["--set", f"tracking.mlflow={mlflow_server}", "--set", "tracking.wandb.mode=offline"]
    kill_driver_when(["run", "tiny", "--run-dir", str(run), "--quiet", *track],
                     lambda: (run / "sft" / "workers.jsonl").exists(), tmp_path / "killed.log")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["sl_cai"]["status"] == "complete"
    assert manifest["stages"]["sft"]["status"] != "complete"
    sl_cai_before = (run / "sl_cai" / "data.jsonl").read_bytes()

    parent = json.loads((run / "manifest.json").read_text())["tracking"]["mlflow"]["run_id"]
    res = cai("run", "tiny", "--run-dir", str(run), "--resume", *track)  # the default console
    assert res.returncode == 0, res.stderr[-4000:]
    console = [ln.rsplit("\r", 1)[-1] for ln in (res.stdout + res.stderr).split("\n")[:-1]]
    print(f"console of the resumed run ({len(console)} lines):", *console, sep="\n")
    assert len(console) <= CONSOLE_LINES, len(console)
    assert sum(ln.startswith("[") and "/6] " in ln for ln in console) == len(STAGES) - 1
    assert (run / "logs" / "driver.log").stat().st_size > 0 and (run / "logs" / "ray").is_dir()
    assert json.loads((run / "manifest.json").read_text())["tracking"]["mlflow"]["run_id"] == \
        parent  # the same parent run goes on
    print("mlflow read back:", check_mlflow(mlflow_server, run, STAGES, rl_iterations=2))
    print("wandb offline history rows:", check_wandb(run, STAGES, rl_iterations=2))
    assert "sl_cai" in res.stdout and res.stdout.count("skipped (complete)") == 1
    assert (run / "sl_cai" / "data.jsonl").read_bytes() == sl_cai_before
    for stage in STAGES:
        assert stage in res.stdout and (run / stage / "result.json").exists()
    for name in ("sl_cai/data.jsonl", "sl_cai/sft.jsonl", "preferences/data.jsonl"):
        ids = [r["id"] for r in read_jsonl(run / name)]
        assert ids and len(ids) == len(set(ids)), name
    manifest = json.loads((run / "manifest.json").read_text())
    assert all(manifest["stages"][s]["status"] == "complete" for s in STAGES)
    assert manifest["platform"]["engine_dtype"] == "float32"  # the tiny job sets it
    assert "model.dtype" in manifest["platform"]["engine_dtype_reason"]
    assert (run / "sft" / "model" / "model.safetensors").exists()
    prefs = read_jsonl(run / "preferences" / "data.jsonl")
    assert prefs and all(0.5 <= r["p_chosen"] <= 1.0 for r in prefs)
    check = json.loads((run / "preferences" / "result.json").read_text())["judge_check"]
    assert check["gate"] == "warn" and check["pairs"] == 16 and "ece" in check
    assert manifest["judge_checks"][check["key"]]["judge_model"] == "model"
    top = res.stdout.splitlines()  # the summary opens with the judge check
    assert top[top.index(next(ln for ln in top if ln.startswith("stage "))) - 1].startswith(
        "preferences: judge check of model: accuracy"), top
    assert prefs[0]["judge_model"] == "model"  # the SFT model judged (RUN_DIR/sft/model)
    rres = json.loads((run / "reward" / "result.json").read_text())
    assert rres["pairs_train"] > 0 and rres["soft_labels"]
    assert (run / "reward" / "model" / "config.json").exists()
    rl = json.loads((run / "rl" / "result.json").read_text())
    assert rl["iterations"] == 2 and (run / "rl" / "model" / "config.json").exists()
    assert rl["algorithm"] == "grpo" and rl["reward_source"] == "model"  # the reward stage's
    # eval covers every policy the run produced: base, SFT, the kept RL checkpoint, the final
    ev = json.loads((run / "eval" / "figures.json").read_text())
    assert [p["name"] for p in ev["policies"]] == ["base", "sft", "rl@1", "rl"]
    assert ev["policies"][2]["path"].endswith("rl/policies/iter_1")  # pruned, weights kept
    for kind in ("harmless", "helpful"):
        elo = ev["elo"][kind]["policies"]
        assert elo["base"]["elo"] == 1000 and set(elo) == {"base", "sft", "rl@1", "rl"}
        assert all(e["low"] <= e["elo"] <= e["high"] for e in elo.values())
        assert ev["elo"][kind]["comparisons"] == 6 * ev["prompts"]["red_team" if kind ==
                                                                  "harmless" else "helpful"]
    sets, public = ev["refusals"]["sets"], SHARED_DATA.is_dir()
    if public:  # the public sets of ../shared/data (always there in CI)
        assert {"red_team", "all_harmful", "all_benign"} <= set(sets)
        for name in ("harmbench", "xstest-safe"):
            assert sets[name]["n"] == 6 and set(sets[name]["policies"]) == {"base", "sft",
                                                                            "rl@1", "rl"}
    else:  # a default public set that is absent is skipped (with a warning), not an error
        assert "red_team" in sets and not {"harmbench", "xstest-safe", "all_benign"} & set(sets)
    summary = json.loads((run / "eval" / "result.json").read_text())
    lo, hi = summary["refusal/difference/final_vs_base_ci"]
    assert lo <= summary["refusal/difference/final_vs_base"] <= hi
    page = (run / "eval" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3 and "Elo" in page
    assert '<p class="check">preferences: judge check of model' in page
    assert {"refusal/moved_by", "refusal/step/sft", "refusal/step/rl"} <= set(summary)
    assert ("xstest-safe" in page) == public
    answers = read_jsonl(run / "eval" / "answers.jsonl")
    assert all({"base", "sft", "rl@1", "rl"} <= set(a) for a in answers)

    # --resume: every stage is complete under the same config, so nothing runs again, and no
    # cluster is started or joined (an address nobody listens on is never contacted)
    again = cai("run", "tiny", "--run-dir", str(run), "--quiet", "--resume", "--set",
                "ray.address=127.0.0.1:9", timeout=120)
    assert again.returncode == 0 and again.stdout.count("skipped (complete)") == len(STAGES)


@pytest.mark.slow  # the driver-kill path runs in CI above, the stored reference's reuse in
# tests/unit/test_dpo_reference.py; this is the two together through the CLI
def test_dpo_on_a_run_directory_driver_killed_then_resumed(tmp_path):
    """`--stages dpo` on the SL-CAI pairs (the HF recipe's data) after sl_cai and sft: its inputs
    come from complete stages, which do not run again. Killed once DPO has stored its reference
    log-probs; --resume reuses them byte for byte and DPO completes on SFT's model."""
    run = tmp_path / "run"
    res = cai("run", "tiny", "--run-dir", str(run), "--quiet", "--stages", "sl_cai,sft")
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    before_sft_seconds = manifest["stages"]["sft"]["seconds"]
    dpo = ["run", "tiny", "--run-dir", str(run), "--quiet", "--stages", "dpo",
           "--set", "dpo.data=sl_cai_pairs", "--set", "dpo.num_workers=2",
           "--set", "dpo.micro_batch_size=2", "--set", "dpo.lr=1e-4"]

    def refs():
        return list((run / "dpo" / "data").glob("ref_logps-*.jsonl"))

    kill_driver_when(dpo, lambda: bool(refs()), tmp_path / "killed-dpo.log")
    stored = refs()[0].read_bytes()
    res = cai(*dpo, "--resume")
    assert res.returncode == 0, res.stderr[-3000:]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["dpo"]["status"] == "complete"
    assert manifest["stages"]["sft"]["seconds"] == before_sft_seconds  # not run again
    assert [p.read_bytes() for p in refs()] == [stored]
    out = json.loads((run / "dpo" / "result.json").read_text())
    assert out["start_model"] == str(run / "sft" / "model") and out["steps"] >= 1
    assert out["pairs_train"] > 0 and 0 <= out["eval/rewards/accuracy"] <= 1
    assert (run / "dpo" / "model" / "model.safetensors").exists()
