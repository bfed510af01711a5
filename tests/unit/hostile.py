"""Hostile files of every kind, for every reader of the command line: a generator the tests
(test_hostile_inputs.py) and benchmarks/bad_inputs.py share, so that a new reader is covered by
adding one entry to TARGETS.

A kind builds a file (or names a special one) in a folder; a target says where a command line
reads a file of its format, and how to call it. Every (target, kind) pair must end in exit 2 with
one `cai-ray: error:` line naming the file, and leave the run directory as it was.

    for target, kind in cases():
        path = build(kind, target, folder); argv = TARGETS[target].argv(path, run_dir)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DEEP = 20_000
"""Levels of nesting of a `deep` file: far past any parser's recursion limit."""


# -- kinds ---------------------------------------------------------------------------------------

def _fifo(path: Path, fmt: str) -> Path:
    os.mkfifo(path)
    return path


def _device(target: str) -> Callable[[Path, str], Path]:
    def build(path: Path, fmt: str) -> Path:
        path.symlink_to(target)  # a link, so fixed names (manifest.json) can be devices too
        return path
    return build


def _folder(path: Path, fmt: str) -> Path:
    path.mkdir()
    (path / "note.txt").write_text("a folder where a file is expected\n")
    return path


def _huge(kind: str) -> Callable[[Path, str], Path]:
    """A sparse file one byte over the reader's size cap (no disk used, nothing to read)."""
    def build(path: Path, fmt: str) -> Path:
        from cai_ray.rundir.readers import limit_bytes

        with open(path, "wb") as fh:
            fh.truncate(limit_bytes(kind) + 1)
        return path
    return build


def _deep(path: Path, fmt: str) -> Path:
    if fmt == "yaml":
        text = "a: " + "[" * DEEP + "]" * DEEP + "\n"
    else:
        text = '{"prompt": ' + "[" * DEEP + "]" * DEEP + "}\n"
    path.write_text(text)
    return path


def _long_name(path: Path, fmt: str) -> Path:
    return path.parent / ("x" * 300 + path.suffix)


def _non_utf8(path: Path, fmt: str) -> Path:
    path.write_bytes(b'{"prompt": "caf\xe9"}\n' if fmt != "yaml" else b"name: caf\xe9\n")
    return path


WRONG_TYPES = {
    # per format: files whose structure parses but whose rows or fields have the wrong type
    "prompts": ['{"messages": ["hi", "there"]}', '{"messages": [{"role": "user", "content": 3}]}',
                "42", '{"prompt": 7}'],
    "advbench": ["seeds:\n  - value: x\n    harm_categories: 5\n", "seeds: 3\n",
                 "seeds:\n  - value: 7\n"],
    "hh": ['{"chosen": 5, "rejected": "x"}', "17"],
    "sft": ["3", '{"messages": "not a list"}', '{"messages": [{"role": "user", "content": "q"}]}',
            '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", '
            '"content": "a"}]}\n{"other": 1}'],
    "prefs": ['{"prompt": "q", "chosen": 5, "rejected": "b"}',
              '{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": NaN}',
              '{"prompt": "q", "chosen": "a", "rejected": "b", "p_chosen": "high"}', "[1, 2]"],
    "pairs": ['{"chosen": [1], "rejected": "b"}', "null"],
    "answers": ['{"answer": 12}', '"just a string"'],
    "constitution": ["critique_revision:\n  - id: a\n    critique: 5\n    revision: r\n",
                     "- a list\n- not a mapping\n", "judge: {a: 1}\n"],
    "hf_constitution": ['{"constitutions": [{"critic": "c", "revision": "r"}], "system_chat": '
                        'null}', '{"constitutions": [{"critic": "c", "revision": "r"}], '
                        '"system_chat": 5}', '{"constitutions": 3}'],
    "job": ["- just\n- a list\n", "sl_cai: 5\n", "sl_cai:\n  num_rounds: true\n",
            "rl:\n  lr: .inf\n", "sl_cai:\n  num_rounds: 1\n  num_rounds: 2\n"],
    "manifest": ["[1, 2]", "null", '{"stages": [1]}', '{"stages": {"sft": "complete"}}',
                 '{"stages": {}, "config": {"sl_cai": {"num_rounds": "many"}}}',
                 '{"stages": {}, "tracking": ["run-1"]}'],
    "key": ["\n"],
}
"""Each entry is one case: `wrong_types[0]`, `wrong_types[1]`, ..."""


def _wrong_types(index: int) -> Callable[[Path, str], Path | None]:
    def build(path: Path, fmt: str) -> Path | None:
        texts = WRONG_TYPES.get(fmt, [])
        if index >= len(texts):
            return None
        path.write_text(texts[index] + "\n")
        return path
    return build


@dataclass
class Target:
    """Where the command line reads one format."""
    fmt: str                      # a key of WRONG_TYPES
    cap: str                      # the reader's size-cap kind (rundir/readers.py LIMITS_MB)
    name: str                     # the file's name
    argv: Callable[[Path, Path], list[str]]  # (hostile path, run directory) -> arguments
    in_run_dir: bool = False      # the file is the run directory's own (manifest.json)
    syntax: str = "json"          # json (and JSONL) or yaml: how a deep or non-UTF-8 file reads


def _run(*extra: str) -> Callable[[Path, Path], list[str]]:
    return lambda p, run: ["run", "tiny", "--dry-run", "--run-dir", str(run),
                           *[a.format(p=p) for a in extra]]


TARGETS: dict[str, Target] = {
    "job file": Target("job", "job", "job.yaml",
                       lambda p, run: ["run", str(p), "--dry-run", "--run-dir", str(run)],
                       syntax="yaml"),
    "constitution": Target("constitution", "constitution", "c.yaml",
                           _run("--set", "constitution.path={p}"), syntax="yaml"),
    "HF-recipe constitution": Target("hf_constitution", "constitution", "c.json",
                                     _run("--set", "constitution.path={p}")),
    "prompt file": Target("prompts", "prompts", "prompts.jsonl", _run("--prompts", "{p}")),
    "HH-RLHF prompt file": Target("hh", "prompts", "hh.jsonl", _run("--prompts", "hh-rlhf:{p}")),
    "AdvBench prompt file": Target("advbench", "prompts", "adv.prompt",
                                   _run("--prompts", "advbench:{p}"), syntax="yaml"),
    "SFT data": Target("sft", "data", "sft.jsonl",
                       _run("--stages", "sft", "--set", "sft.data={p}")),
    "preference data": Target("prefs", "data", "prefs.jsonl",
                              _run("--stages", "reward", "--set", "reward.data={p}")),
    "judge check pairs": Target("pairs", "data", "pairs.jsonl",
                                lambda p, run: ["eval", "judge", "--data", str(p), "--n", "2"]),
    "refusal answers": Target("answers", "data", "answers.jsonl",
                              lambda p, run: ["eval", "refusals", "--data", str(p)]),
    "manifest (eval)": Target("manifest", "manifest", "manifest.json",
                              lambda p, run: ["eval", str(run)], in_run_dir=True),
    "manifest (run --resume)": Target("manifest", "manifest", "manifest.json",
                                      lambda p, run: ["run", "tiny", "--resume", "--dry-run",
                                                      "--run-dir", str(run)], in_run_dir=True),
    "manifest (serve)": Target("manifest", "manifest", "manifest.json",
                               lambda p, run: ["serve", str(run)], in_run_dir=True),
    "API key file": Target("key", "key", "key.txt",
                           lambda p, run: ["serve", "tiny-random-llama", "--api-key-file",
                                           str(p)]),
    "Ray token file": Target("key", "key", "token.txt",
                             lambda p, run: ["jobs", "list", "--address", "http://127.0.0.1:9",
                                             "--token-file", str(p)]),
}

KINDS: dict[str, Callable] = {
    "FIFO": lambda target: _fifo,
    "/dev/zero": lambda target: _device("/dev/zero"),
    "/dev/urandom": lambda target: _device("/dev/urandom"),
    "folder": lambda target: _folder,
    "huge": lambda target: _huge(target.cap),
    "deep": lambda target: _deep,
    "300-character name": lambda target: _long_name,
    "not UTF-8": lambda target: _non_utf8,
    **{f"wrong types {i}": (lambda i: lambda target: _wrong_types(i))(i) for i in range(5)},
}

NOT_FOR = {
    # kinds that are no error for a target (a folder is a valid CAI-paper constitution or a
    # folder of prompt files; a key file has no structure to nest; deep YAML is for YAML)
    "constitution": {"folder"},
    "prompt file": {"folder"},
    "HH-RLHF prompt file": {"folder"},
    "API key file": {"deep", "not UTF-8"},
    "Ray token file": {"deep", "not UTF-8"},
    "manifest (eval)": {"300-character name"},
    "manifest (run --resume)": {"300-character name"},
    "manifest (serve)": {"300-character name"},
}


def build(kind: str, target: str, folder: Path) -> Path | None:
    """The hostile file for (kind, target) in folder; None when the kind has no case there."""
    t = TARGETS[target]
    if kind in NOT_FOR.get(target, ()):
        return None
    path = folder / t.name
    return KINDS[kind](t)(path, t.syntax if kind in ("deep", "not UTF-8") else t.fmt)


def cases() -> list[tuple[str, str]]:
    """Every (target, kind) pair that has a case."""
    out = []
    for target, t in TARGETS.items():
        for kind in KINDS:
            if kind in NOT_FOR.get(target, ()):
                continue
            if kind.startswith("wrong types ") and int(kind.split()[-1]) >= len(
                    WRONG_TYPES.get(t.fmt, [])):
                continue
            out.append((target, kind))
    return out


def tree_digest(path: Path) -> str:
    """Names and bytes of every regular file under path (special files by name only)."""
    import hashlib

    h = hashlib.sha256()
    if not path.exists():
        return "absent"
    for f in sorted(path.rglob("*")):
        h.update(str(f.relative_to(path)).encode())
        if f.is_file() and not f.is_symlink():
            h.update(f.read_bytes())
    return h.hexdigest()


def existing_run_dir(root: Path) -> Path:
    """A run directory an earlier run left (what a bad input must not touch)."""
    d = root / "run"
    (d / "sl_cai").mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"name": "earlier", "stages": {}}) + "\n")
    (d / "sl_cai" / "data.jsonl").write_text('{"id": "p-1"}\n')
    return d
