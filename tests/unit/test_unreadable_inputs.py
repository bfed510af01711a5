"""Files this user cannot read (a constitution, a gzipped prompt file, a CAI-paper folder's file):
one InputError naming the file and the fix, not a PermissionError traceback.

root reads every file whatever its mode, so when the suite runs as root (CI does) the check runs in
a forked child that has dropped to an unprivileged uid after the imports: the file's mode is real
and the kernel refuses the read."""

import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from cai_ray.constitution import load_constitution
from cai_ray.errors import InputError
from cai_ray.prompts.sources import load_prompts

NOBODY = 65534


def error_as_unprivileged(fn) -> str:
    """Run fn in a child that cannot bypass file modes; return the InputError's text ('' if none,
    'OTHER: ...' for any other exception)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            if os.geteuid() == 0:
                os.setgid(NOBODY)
                os.setuid(NOBODY)
            try:
                fn()
                msg = ""
            except InputError as exc:
                msg = str(exc)
            except BaseException as exc:  # noqa: BLE001 - reported to the parent
                msg = f"OTHER: {type(exc).__name__}: {exc}"
            os.write(w, msg.encode())
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    return b"".join(chunks).decode()


@pytest.fixture
def locked():
    # pytest's own tmp folders are private to root: the unprivileged child must reach the files
    # to be refused by them, so they go in a world-traversable folder of their own
    folder = Path(tempfile.mkdtemp(prefix="cai-ray-unreadable-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_unreadable_constitution_names_the_file(locked):
    f = locked / "c.yaml"
    f.write_text("critique_revision:\n  - {id: a, critique: c, revision: r}\n")
    f.chmod(0)
    msg = error_as_unprivileged(lambda: load_constitution(f))
    assert msg.startswith(f"{f}: not readable"), msg


def test_unreadable_file_in_a_cai_paper_folder_names_that_file(locked):
    folder = locked / "cai"
    folder.mkdir()
    (folder / "CritiqueRevisionInstructions.json").write_text(json.dumps(
        {"h0": {"prompt": ["CritiqueRequest: c"], "edit_request": "RevisionRequest: r"}}))
    (folder / "RLMadisonInstructions.json").write_text(json.dumps(["Which is kinder?"]))
    (folder / "RLMadisonInstructions.json").chmod(0)
    msg = error_as_unprivileged(lambda: load_constitution(folder))
    assert msg.startswith(f"{folder / 'RLMadisonInstructions.json'}: not readable"), msg


def test_unreadable_gzipped_prompt_file_names_the_file(locked):
    f = locked / "p.jsonl.gz"
    f.write_bytes(gzip.compress(b'{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: hello"}\n'))
    assert load_prompts([str(f)]).prompts  # readable: the file itself is fine
    f.chmod(0)
    msg = error_as_unprivileged(lambda: load_prompts([str(f)]))
    assert msg.startswith(f"{f}: not readable"), msg


def test_constitution_behind_a_folder_this_user_cannot_enter(locked):
    inner = locked / "private"
    inner.mkdir()
    (inner / "c.yaml").write_text("critique_revision:\n  - {id: a, critique: c, revision: r}\n")
    inner.chmod(0o700)
    msg = error_as_unprivileged(lambda: load_constitution(inner / "c.yaml"))
    assert msg.startswith(f"{inner / 'c.yaml'}: not readable"), msg
