"""Each bad input: exit code 2, one line on stderr naming the file/field, run directory
untouched."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cai_ray.cli import main


def cli(*args, cwd=None):
    """A bad input is answered in seconds: one that hangs fails the test at 120 s."""
    return subprocess.run([sys.executable, "-m", "cai_ray.cli", *args], capture_output=True,
                          text=True, cwd=cwd, env={**os.environ, "CAI_RAY_FORCE_CPU": "1"},
                          timeout=120)


def tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(path.rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file():
            h.update(f.read_bytes())
    return h.hexdigest()


@pytest.fixture
def run_dir(tmp_path):
    d = tmp_path / "run"
    (d / "sl_cai").mkdir(parents=True)
    (d / "manifest.json").write_text('{"name": "earlier", "stages": {}}\n')
    (d / "sl_cai" / "data.jsonl").write_text('{"id": "p-1"}\n')
    return d


def _files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    nonutf = tmp_path / "latin1.txt"
    nonutf.write_bytes("caf\xe9\n".encode("latin-1"))
    trunc = tmp_path / "trunc.jsonl"
    trunc.write_text('{"prompt": "a"}\n{"prompt": "b')
    noprin = tmp_path / "noprin.yaml"
    noprin.write_text("name: empty\n")
    missing = tmp_path / "missing.yaml"
    missing.write_text("critique_revision:\n  - id: a\n    critique: c\n")
    wrongtype = tmp_path / "wrongtype.yaml"
    wrongtype.write_text("critique_revision:\n  - id: a\n    critique: [1, 2]\n    revision: r\n")
    afile = tmp_path / "afile.txt"
    afile.write_text("not a folder\n")
    badp = tmp_path / "prefs.jsonl"
    badp.write_text('{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 0.7}\n'
                    '{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": 1.5}\n')
    sftdata = tmp_path / "sft.jsonl"
    sftdata.write_text('{"messages": [{"role": "user", "content": "q"}, '
                       '{"role": "assistant", "content": "a"}]}\n')
    hf = tmp_path / "hf.json"
    hf.write_text('{"constitutions": [{"critic": "c0", "revision": "r0"}, {"critic": "c1"}], '
                  '"system_chat": []}')
    cai = tmp_path / "cai"
    cai.mkdir()
    (cai / "CritiqueRevisionInstructions.json").write_text(
        '{"harmful0": {"prompt": ["CritiqueRequest: c"]}}')
    return locals()


CASES = {
    "constitution without principles": (["--set", "constitution.path={noprin}"], "noprin.yaml"),
    "constitution missing field": (["--set", "constitution.path={missing}"],
                                   "critique_revision.0.revision"),
    "constitution wrong type": (["--set", "constitution.path={wrongtype}"],
                                "critique_revision.0.critique"),
    "HF recipe constitution missing a key": (["--set", "constitution.path={hf}"],
                                             "hf.json: constitutions.1.revision: missing"),
    "CAI-paper folder missing a key": (["--set", "constitution.path={cai}"],
                                       "CritiqueRevisionInstructions.json: harmful0.edit_request"),
    "sft data missing": (["--set", "sft.data=/nonexistent/sft.jsonl"],
                         "/nonexistent/sft.jsonl: sft.data not found"),
    "sft data without messages": (["--set", "sft.data={badp}"],
                                  "prefs.jsonl: line 1: messages: missing"),
    "reward data missing": (["--set", "reward.data=/nonexistent/p.jsonl"],
                            "/nonexistent/p.jsonl: reward.data not found"),
    "unknown section from --set": (["--set", "bogus.field=1"], "--set bogus.field=1: bogus"),
    "engines larger than the machine's memory": (["--set", "engine.num_actors=64",
                                                  "--set", "engine.kv_cache_gib=500"],
                                                 "GiB of memory; this machine has"),
    "GPU engines on a machine without GPUs": (["--set", "engine.num_gpus_per_actor=1",
                                               "--set", "rl.use_gpu=true"],
                                              "GPU(s); this machine has 0"),
    "non-UTF-8 prompt file": (["--prompts", "{nonutf}"], "latin1.txt: line 1: not UTF-8"),
    "truncated prompt file": (["--prompts", "{trunc}"], "trunc.jsonl: line 2"),
    "empty prompt set": (["--prompts", "{empty}"], "no usable prompts"),
    "unknown model": (["--model", "no-such-model"], "no-such-model"),
    "limit zero": (["--limit", "0"], "--limit 0"),
    "bad config value": (["--set", "sl_cai.num_rounds=-1"], "sl_cai.num_rounds"),
    "unknown stage": (["--stages", "sl_cai,bake"], "--stages sl_cai,bake"),
    "unknown algorithm": (["--set", "rl.algorithm=ppo3"], "rl.algorithm"),
    "group estimator, one sample": (["--set", "rl.samples_per_prompt=1"],
                                    "rl.samples_per_prompt"),
    "critic setting without a critic": (["--set", "rl.value_clip=0.3"], "rl.value_clip"),
    "clip low above high": (["--set", "rl.clip_low=0.4"], "rl.clip_low"),
    "reward source unknown": (["--set", "rl.reward=bogus"], "rl.reward"),
    "reward callable not importable": (["--set", "rl.reward=no_such_mod:fn"], "cannot import"),
    "reward callable wrong length": (["--set", "rl.reward=my_rewards:one"],
                                     "list of 2 numbers"),
    "served judge, pointwise": (["--set", "rl.reward=http://127.0.0.1:1/v1/judge",
                                 "--set", "rl.judge_mode=pointwise"], "rl.judge_mode pointwise"),
    "served judge nobody serves": (["--set", "rl.reward=http://127.0.0.1:1/v1/judge"],
                                   "did not answer a probe"),
    "reward URL of no scorer": (["--set", "rl.reward=http://127.0.0.1:1/v1/chat/completions"],
                                "give a served scorer's URL"),
    "no reward model for rl": (["--stages", "rl", "--set", "start_policy=base"],
                               "rl reads reward_model"),
    "rl with no policy": (["--stages", "rl", "--set", "rl.reward=short"], "rl reads policy"),
    "sft on an empty run directory": (["--stages", "sft"], "sft reads sft_data"),
    "dpo without preference data": (["--stages", "dpo", "--set", "start_policy=base"],
                                    "dpo reads preferences"),
    "dpo without sl_cai pairs": (["--stages", "sft,dpo", "--set", "dpo.data=sl_cai_pairs",
                                  "--set", "sft.data={sftdata}"], "dpo reads pairs"),
    "dpo soft label out of range": (["--stages", "sft,dpo", "--set", "dpo.data={badp}",
                                     "--set", "sft.data={sftdata}"],
                                    "prefs.jsonl: line 2: p_chosen"),
    "lora target the model lacks": (["--set", "sft.lora={{target_modules: [qkv_proj]}}"],
                                    "sft.lora.target_modules: ['qkv_proj']"),
    "lora rank zero": (["--set", "dpo.lora.rank=0"], "dpo.lora.rank"),
    "adapter-only export read by a later stage": (["--set", "sft.lora={{save: adapter}}"],
                                                  "sft.lora.save: adapter, but preferences"),
    "old ppo section, bad value": (["--set", "ppo.kl_coef=-1"], "rl.kl_coef"),
    "run directory is a file": (["--run-dir", "{afile}"], "afile.txt: a file, not a folder"),
    "run directory under a file": (["--run-dir", "{afile}/run"], "afile.txt is a file"),
    "empty run directory": (["--run-dir", ""], "run_dir"),
    "run directory on storage nobody serves": (
        ["--run-dir", "s3://bucket/run?endpoint_override=127.0.0.1:1&scheme=http"],
        "cannot use this storage"),
    "ray address nobody listens on": (
        ["--force", "--set", "ray.address=127.0.0.1:9"],
        "Ray address 127.0.0.1:9: no cluster answers there"),
    "run directory URI with an unknown option": (
        ["--run-dir", "s3://bucket/run?endpoint=127.0.0.1:1"], "unknown option(s) ['endpoint']"),
}


def ray_is_up_in_this_process() -> bool:
    """Whether a test before this one left Ray initialised in pytest's process (the session's
    ray_cluster fixture when tests/integration ran first): the CLI in its own process then."""
    ray = sys.modules.get("ray")
    return ray is not None and ray.is_initialized()


@pytest.mark.timeout(120)  # a bad input is answered in seconds; a hang fails here, with a report
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exit_2(tmp_path, run_dir, case, capsys, monkeypatch):
    """In process (the CLI's main, as `cai-ray` calls it): a subprocess each cost 4 s of imports.
    The subprocess path is covered by the tests below and by tests/integration."""
    files = _files(tmp_path)
    args, expect = CASES[case]
    args = [a.format(**files) for a in args]
    before = tree_digest(run_dir)
    (tmp_path / "my_rewards.py").write_text("def one(prompts, completions, **kw):\n"
                                            "    return [1.0]\n")
    if ray_is_up_in_this_process():  # main() would join it, as a library caller's Ray
        res = cli("run", "tiny", "--run-dir", str(run_dir), *args, cwd=tmp_path)
        code, err = res.returncode, res.stderr
    else:
        monkeypatch.setenv("CAI_RAY_FORCE_CPU", "1")
        monkeypatch.chdir(tmp_path)
        code = main(["run", "tiny", "--run-dir", str(run_dir), *args])
        err = capsys.readouterr().err
    assert code == 2, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.startswith("cai-ray: error:")]
    assert len(lines) == 1 and expect in lines[0], err[-2000:]
    assert tree_digest(run_dir) == before


def test_a_bad_job_file_is_answered_before_torch_is_imported():
    """Validating a job reads the RL registries (which algorithm needs a critic, which compares
    samples of a prompt) but imports no torch: a bad `--set` is answered in well under a second,
    not after torch's 1.5-second import. A good job loads without it too."""
    code = ("import sys\nfrom cai_ray.cli import main\nfrom cai_ray.config import load_job\n"
            "load_job('default')\nrc = main(['run', 'tiny', '--set', 'rl.algorithm=ppo',\n"
            "          '--set', 'rl.samples_per_prompt=1', '--set', 'sft.lr=-1'])\n"
            "print(rc, 'torch' in sys.modules)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert "sft.lr" in res.stderr and res.stdout.split() == ["2", "False"], res.stderr[-2000:]


def test_constitution_validate_cli(tmp_path):
    assert cli("constitution", "validate", "default").returncode == 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("judge:\n  - id: x\n")
    res = cli("constitution", "validate", str(bad))
    assert res.returncode == 2 and "judge.0.text" in res.stderr
    shown = cli("constitution", "show", "short")
    assert shown.returncode == 0 and "Say how the reply could be harmful." in shown.stdout


def test_models_list_cli():
    res = cli("models", "list")
    assert res.returncode == 0
    assert "smollm2-135m-instruct" in res.stdout and "tiny-random-llama" in res.stdout


def test_submit_env_without_a_value_exits_2_before_contacting_anyone(tmp_path):
    """--env FOO (no =): one line naming the flag, exit 2; the address is never contacted (an
    unreachable one would give another error)."""
    res = cli("submit", "tiny", "--address", "http://127.0.0.1:9", "--env", "FOO", cwd=tmp_path)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("cai-ray: error:")]
    assert len(lines) == 1 and "--env FOO: give KEY=VALUE" in lines[0], res.stderr[-2000:]


@pytest.mark.parametrize("manifest, expect", [("{bad", "manifest.json: line 1: invalid JSON"),
                                              ('{"stages": {}}', "no job config recorded")])
def test_eval_on_a_damaged_manifest_exits_2_untouched(tmp_path, manifest, expect):
    run = tmp_path / "run"
    run.mkdir()
    (run / "manifest.json").write_text(manifest)
    before = tree_digest(run)
    res = cli("eval", str(run))
    assert res.returncode == 2, res.stderr[-2000:]
    assert expect in res.stderr.splitlines()[-1]
    assert tree_digest(run) == before
