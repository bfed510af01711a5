"""Every reader of the command line against every kind of hostile file (tests/unit/hostile.py:
FIFOs, devices, folders, files over the size cap, 20,000 levels of nesting, names over 255 bytes,
non-UTF-8 bytes, rows of the wrong type): exit 2, one `cai-ray: error:` line that names the file,
and an existing run directory left byte for byte as it was. Run in-process through the CLI's own
main (the same code path as the `cai-ray` command, without a Python start per case); a reader
that blocks on a FIFO fails the case at its timeout instead of hanging the suite."""

from __future__ import annotations

import os

import pytest
from hostile import TARGETS, build, cases, existing_run_dir, tree_digest

from cai_ray.cli import main


@pytest.fixture(autouse=True)
def _cpu(monkeypatch):
    monkeypatch.setenv("CAI_RAY_FORCE_CPU", "1")
    monkeypatch.setenv("CAI_RAY_API_KEY", "")
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("target, kind", cases(), ids=[f"{t}: {k}" for t, k in cases()])
def test_hostile_file_is_one_line_exit_2_run_dir_untouched(tmp_path, capsys, target, kind):
    t = TARGETS[target]
    run = existing_run_dir(tmp_path)
    folder = run if t.in_run_dir else tmp_path
    if t.in_run_dir:
        (run / t.name).unlink()
    path = build(kind, target, folder)
    assert path is not None
    before = tree_digest(run)
    code = main(t.argv(path, run))
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("cai-ray: error:")]
    assert code == 2, err[-2000:]
    assert len(lines) == 1, err[-2000:]
    named = str(path)[:80] if len(path.name) > 255 else path.name
    assert named in lines[0], lines[0]
    assert tree_digest(run) == before


def test_every_target_meets_every_general_kind():
    """The generator covers each reader with each kind that applies to it (a new target gets
    them all by default)."""
    from hostile import KINDS, NOT_FOR

    got = set(cases())
    general = [k for k in KINDS if not k.startswith("wrong types ")]
    for target in TARGETS:
        for kind in general:
            if kind not in NOT_FOR.get(target, ()):
                assert (target, kind) in got
        assert (target, "wrong types 0") in got, target


def test_a_fifo_is_refused_without_being_opened(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes: the reader must refuse it from
    its file type, before any open()."""
    from cai_ray.errors import InputError
    from cai_ray.rundir import readers

    fifo = tmp_path / "p.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match="FIFO"):
        readers.read_text(fifo, "prompts", "prompt file")
