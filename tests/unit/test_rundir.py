import json

import pytest

from cai_ray.rundir.files import ProgressLog, read_jsonl, save_dataset, write_json_atomic
from cai_ray.rundir.layout import RunDir


def test_progress_log_survives_a_torn_line(tmp_path):
    p = tmp_path / "progress.jsonl"
    log = ProgressLog(p)
    log.add({"id": "a", "x": 1})
    log.add({"id": "b", "x": 2})
    log.add({"id": "a", "x": 99})  # a second write of the same id is ignored
    log.close()
    with open(p, "a") as fh:
        fh.write('{"id": "c", "x"')  # killed mid-write
    log2 = ProgressLog(p)
    assert sorted(log2.rows) == ["a", "b"] and log2.rows["a"]["x"] == 1
    log2.add({"id": "c", "x": 3})
    log2.close()
    assert [r["id"] for r in read_jsonl(p)] == ["a", "b", "c"]


def test_save_dataset_writes_both_forms(tmp_path):
    import datasets

    rows = [{"id": "a", "rounds": [{"k": "v"}], "meta": {"x": 1}}]
    save_dataset(tmp_path / "data", rows)
    assert json.loads((tmp_path / "data.jsonl").read_text())["meta"] == {"x": 1}
    ds = datasets.load_from_disk(str(tmp_path / "data"))
    assert ds[0]["id"] == "a" and ds[0]["rounds"] == [{"k": "v"}]


def test_manifest_and_identity(tmp_path):
    import pytest

    from cai_ray.errors import InputError

    rd = RunDir(tmp_path / "run")
    rd.check_identity("id1", "job")  # new directory: fine
    rd.open("id1", "job", {})
    rd.mark("sl_cai", status="complete", digest="d1")
    rd.write_result("sl_cai", {"prompts": 3})
    assert rd.is_complete("sl_cai", "d1") and not rd.is_complete("sl_cai", "d2")
    with pytest.raises(InputError, match="belongs to another job"):
        rd.check_identity("id2", "other")
    rd.check_identity("id2", "other", force=True)
    write_json_atomic(tmp_path / "x.json", {"a": 1})
    assert not list(tmp_path.glob(".x.json.tmp*"))


def test_a_line_torn_inside_a_multibyte_character_is_dropped(tmp_path):
    """A kill in the middle of a UTF-8 character: the torn bytes are dropped before decoding, so
    both reading and reopening the log work, and the next row lands on a fresh line."""
    p = tmp_path / "progress.jsonl"
    log = ProgressLog(p)
    log.add({"id": "a", "text": "déjà vu"})
    log.close()
    row = json.dumps({"id": "b", "text": "naïve ünïcode"}, ensure_ascii=False).encode()
    cut = row.index("ï".encode()) + 1  # half of a two-byte character
    with open(p, "ab") as fh:
        fh.write(row[:cut])
    assert [r["id"] for r in read_jsonl(p)] == ["a"]
    log2 = ProgressLog(p)
    log2.add({"id": "b", "text": "naïve"})
    log2.close()
    assert [r["text"] for r in read_jsonl(p)] == ["déjà vu", "naïve"]


def test_atomic_json_is_fsynced_and_renamed(tmp_path, monkeypatch):
    """write_json_atomic fsyncs the file before the rename and the directory after it."""
    import os

    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real(fd)))
    write_json_atomic(tmp_path / "state.json", {"a": 1})
    assert json.loads((tmp_path / "state.json").read_text()) == {"a": 1}
    assert any(".state.json.tmp" in s for s in synced) and str(tmp_path) in synced
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]


@pytest.mark.parametrize("keep", [0, 1, 2])
def test_old_outputs_moved_aside_are_bounded_by_keep_previous(tmp_path, keep):
    from cai_ray.pipeline import _move_aside

    rd = RunDir(tmp_path / "run")
    for n in range(4):  # four config changes of sft, one of rl
        (rd.path / "sft").mkdir(parents=True)
        (rd.path / "sft" / "v").write_text(str(n))
        _move_aside(rd, "sft", keep)
    (rd.path / "rl").mkdir()
    _move_aside(rd, "rl", keep)
    prev = rd.path / ".previous"
    kept = sorted(prev.glob("sft-*"), key=lambda p: int(p.name[4:])) if prev.exists() else []
    assert [p.joinpath("v").read_text() for p in kept] == ["0", "1", "2", "3"][4 - keep:][:keep]
    assert len(list(prev.glob("rl-*")) if prev.exists() else []) == min(keep, 1)
    assert not (rd.path / "sft").exists()


def test_disk_watch_keeps_the_peak_of_files_that_were_deleted(tmp_path):
    import time

    from cai_ray.rundir.layout import DiskWatch

    (tmp_path / "kept").write_bytes(b"x" * 1000)
    with DiskWatch(tmp_path, every_s=0.05) as w:
        (tmp_path / "ckpt").write_bytes(b"y" * 200_000)  # a checkpoint, pruned later
        time.sleep(0.5)
        (tmp_path / "ckpt").unlink()
    assert w.peak_bytes == 201_000
