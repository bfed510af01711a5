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
