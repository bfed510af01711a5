"""The run directory's storage (cai_ray/rundir/storage.py), on a file:// URI (pyarrow's local
filesystem,
the same code path as s3://): what a pull marks as in sync, what a worker's upload sends, and what
stays out of working copies."""

from pathlib import Path

from cai_ray.rundir.storage import TRAIN_STORAGE, Remote


def _remote(tmp_path: Path) -> tuple[Remote, Path, Path]:
    store = tmp_path / "store"
    store.mkdir()
    local = tmp_path / "local"
    local.mkdir()
    return Remote.open(f"file://{store}"), store, local


def test_a_pull_does_not_mark_unpushed_local_files_as_pushed(tmp_path):
    remote, store, local = _remote(tmp_path)
    (local / "a.txt").write_text("a")
    assert remote.push(local)["uploaded"] == 1
    (local / "b.txt").write_text("written by the driver, not pushed yet")
    (store / "c.txt").write_text("published by a worker on another node")
    assert remote.pull(local, prefix="c.txt", missing_only=True) == 1
    assert (local / "c.txt").read_text().startswith("published")
    sent = remote.push(local)
    assert sent["uploaded"] == 1 and (store / "b.txt").exists()  # b still went up; c did not


def test_pull_missing_only_keeps_the_drivers_newer_file(tmp_path):
    remote, store, local = _remote(tmp_path)
    (store / "m").mkdir()
    (store / "m" / "w.bin").write_bytes(b"old weights")
    (store / "m" / "config.json").write_text("{}")
    (local / "m").mkdir()
    (local / "m" / "w.bin").write_bytes(b"the driver's newer weights")
    assert remote.pull(local, prefix="m", missing_only=True) == 1  # only config.json came down
    assert (local / "m" / "w.bin").read_bytes() == b"the driver's newer weights"
    remote.push(local)  # the newer file was not marked as in sync by the pull: it goes up
    assert (store / "m" / "w.bin").read_bytes() == b"the driver's newer weights"
    (store / "m" / "w.bin").write_bytes(b"old weights")
    assert remote.pull(local, prefix="m") == 1  # another node's copy: a size mismatch is replaced
    assert (local / "m" / "w.bin").read_bytes() == b"old weights"


def test_upload_tree_sends_what_the_storage_lacks_and_nothing_private(tmp_path):
    remote, store, local = _remote(tmp_path)
    out = local / "rl" / "checkpoints" / "iter_1"
    (out / "policy").mkdir(parents=True)
    (out / "policy" / "model.safetensors").write_bytes(b"x" * 10)
    (out / "policy" / ".model.safetensors.tmp123").write_bytes(b"partial")
    (out / "state.pt").write_bytes(b"y")
    assert remote.upload_tree(local, "rl/checkpoints/iter_1") == 2
    assert (store / "rl/checkpoints/iter_1/policy/model.safetensors").read_bytes() == b"x" * 10
    assert not (store / "rl/checkpoints/iter_1/policy/.model.safetensors.tmp123").exists()
    assert remote.upload_tree(local, "rl/checkpoints/iter_1") == 0  # already there


def test_ray_train_storage_is_not_pulled_into_working_copies(tmp_path):
    remote, store, local = _remote(tmp_path)
    (store / TRAIN_STORAGE / "sft-1").mkdir(parents=True)
    (store / TRAIN_STORAGE / "sft-1" / "checkpoint.bin").write_bytes(b"z")
    (store / "manifest.json").write_text("{}")
    assert remote.pull(local) == 1
    assert not (local / TRAIN_STORAGE).exists()
