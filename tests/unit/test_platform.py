"""The engine dtype that `auto` picks, by what the processor can do."""

import pytest

from cai_ray import platform


@pytest.fixture
def cpu(monkeypatch):
    def use(flags, cuda=False):
        monkeypatch.setattr(platform, "cpu_flags", lambda: frozenset(flags))
        monkeypatch.setattr(platform, "has_cuda", lambda: cuda)
    return use


def test_auto_is_fp32_without_bf16_instructions(cpu):
    cpu({"avx2", "fma", "avx512f"})
    dtype, why = platform.engine_dtype("auto")
    assert dtype == "float32" and "no bf16 instructions" in why


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_auto_is_bf16_with_bf16_instructions(cpu, flag):
    cpu({"avx2", flag})
    assert platform.engine_dtype("auto") == ("bfloat16", f"auto: this CPU has {flag}")


def test_auto_is_bf16_on_a_gpu_and_an_explicit_dtype_wins(cpu):
    cpu(set(), cuda=True)
    assert platform.engine_dtype("auto")[0] == "bfloat16"
    assert platform.engine_dtype("float32")[0] == "float32"


def test_this_machines_flags_are_read():
    """cpu_flags is the `flags` line of /proc/cpuinfo, every flag of it (read apart here), so
    `auto` decides on what this processor reports."""
    from pathlib import Path

    info = Path("/proc/cpuinfo")
    if not info.is_file():
        assert platform.cpu_flags() == frozenset()
        return
    line = next(x for x in info.read_text().splitlines() if x.startswith("flags"))
    want = frozenset(line.split(":", 1)[1].split())
    assert want and platform.cpu_flags() == want
    bf16 = bool(want & {"avx512_bf16", "amx_bf16"})
    assert (platform.engine_dtype("auto")[0] == "bfloat16") == (bf16 or platform.has_cuda())


@pytest.mark.parametrize("flags,use_gpu,want", [
    ({"avx2", "fma"}, False, "fp32"),
    ({"avx2", "avx512_bf16"}, False, "bf16"),
    ({"amx_bf16"}, False, "bf16"),
    (set(), True, "bf16"),  # GPU workers, whatever the driver's processor
])
def test_trainer_precision_auto_follows_the_hardware(cpu, flags, use_gpu, want):
    cpu(flags)
    got, why = platform.train_precision("auto", use_gpu)
    assert got == want and why.startswith("auto: ")


def test_an_explicit_trainer_precision_wins_and_every_trainer_spec_resolves_auto(cpu):
    from cai_ray.config.rl import RlCfg
    from cai_ray.config.sections import DpoCfg, SftCfg
    from cai_ray.rl.spec import LearnerSpec
    from cai_ray.train.spec import TrainSpec

    cpu({"avx512_bf16"})
    assert platform.train_precision("fp32")[0] == "fp32"
    assert TrainSpec.of(SftCfg()).precision == "bf16"  # the default is auto
    assert TrainSpec.of(DpoCfg(precision="fp32")).precision == "fp32"
    spec = LearnerSpec.of(RlCfg(algorithm="ppo"))  # the critic trains with the learner's spec
    assert spec.train.precision == "bf16" and "avx512_bf16" in spec.train.precision_reason
    cpu({"avx2"})
    assert TrainSpec.of(SftCfg()).precision == "fp32"


def test_our_processes_do_not_import_scikit_learn_through_transformers():
    """cai_ray's import hook: transformers' generation module (imported by every model load, in
    every engine, learner and trainer process) does not pull in scikit-learn, which costs each
    process about a second; without the hook it does (scikit-learn is installed, for MLflow)."""
    import subprocess
    import sys

    code = ("import sys\n{}from transformers import AutoModelForCausalLM\n"
            "import transformers.generation.utils\nprint('sklearn' in sys.modules)")
    got = [subprocess.run([sys.executable, "-c", code.format(first)], capture_output=True,
                          text=True, timeout=120).stdout.strip()
           for first in ("import cai_ray\n", "")]
    assert got == ["False", "True"], got
