"""Red-team and helpful prompt sources.

A source spec is `builtin:red_team`, `builtin:helpful`, a file path (.jsonl .json .csv .parquet .txt
.yaml .jsonl.gz), a typed path (`hh-rlhf:FILE`, `harmbench:FILE`, `advbench:FILE`,
`donotanswer:FILE_OR_DIR`) or `hf:NAME[:SPLIT[:FIELD]]` for a `datasets` hub name where a network
allows it. Every prompt gets a stable id (a hash of its normalised text), so the same prompt from
two files is one prompt, and a rerun finds the same ids.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from cai_ray.errors import InputError
from cai_ray.rundir import readers

BUILTIN_DIR = Path(__file__).resolve().parent.parent / "data"
TEXT_FIELDS = ("prompt", "text", "question", "instruction", "goal", "behavior", "query", "value")


@dataclass
class Prompt:
    id: str
    prompt: str
    source: str
    category: str = ""
    conversation: list[dict] = field(default_factory=list)
    """The full conversation where the source has one (HH-RLHF), as role/content messages."""
    parents: list[str] = field(default_factory=list)
    """For model-written prompts: ids of the seed prompts shown as few-shot examples."""

    def to_row(self) -> dict:
        return asdict(self)


@dataclass
class PromptSet:
    prompts: list[Prompt]
    counts: Counter

    def __len__(self) -> int:
        return len(self.prompts)


def normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def prompt_id(text: str) -> str:
    return "p-" + hashlib.sha1(normalise(text).encode()).hexdigest()[:12]


# -- readers: each yields (prompt text, category, conversation) --------------------------------


def _read_bytes(path: Path) -> bytes:
    return readers.read_bytes(path, "prompts", "prompt file")


def _read_text(path: Path) -> str:
    return readers.decode(_read_bytes(path), path, "prompt file")


def jsonl_rows(path: Path, text: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-empty line; a bad line is one InputError."""
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield n, readers.parse_json(line, path, n)


class _Messages(readers.Row):
    messages: list[readers.Message]


def _field(row, path: Path, where: str) -> str:
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise InputError(f"{path}: {where}: expected a prompt (text, or an object with one of "
                         f"{list(TEXT_FIELDS)} or messages), got {readers.type_name(row)}")
    for key in TEXT_FIELDS:
        if key in row and row[key] is not None:
            if not isinstance(row[key], str):
                raise InputError(f"{path}: {where}: {key}: expected text, got "
                                 f"{readers.type_name(row[key])}")
            return row[key]
    if "messages" in row:
        msgs = readers.validate(row, _Messages, path, where).messages
        users = [m.content for m in msgs if m.role == "user"]
        if users:
            return users[0]
        raise InputError(f"{path}: {where}: messages: no user message")
    if isinstance(row.get("chosen"), str):  # HH-RLHF row in a plain .jsonl
        return hh_first_turn(row["chosen"], path, where)
    raise InputError(f"{path}: {where}: no prompt field (expected one of {list(TEXT_FIELDS)} "
                     f"or messages)")


def _category(row, path: Path, where: str) -> str:
    cat = row.get("category") if isinstance(row, dict) else None
    if cat is None:
        return ""
    if not isinstance(cat, str):
        raise InputError(f"{path}: {where}: category: expected text, got "
                         f"{readers.type_name(cat)}")
    return cat


def hh_first_turn(transcript: str, path: Path | str = "", where: str = "") -> str:
    turns = hh_messages(transcript)
    if not turns or turns[0]["role"] != "user":
        raise InputError(f"{path}: {where}: not an HH-RLHF transcript (no '\\n\\nHuman:' turn)")
    return turns[0]["content"]


def hh_messages(transcript: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b' -> [{'role': 'user', ...}, {'role': 'assistant', ...}]."""
    from cai_ray.constitution import parse_transcript

    role = {"Human": "user", "Assistant": "assistant"}
    return [{"role": role[t], "content": c} for t, c in parse_transcript(transcript) if t in role]


def read_hh_rlhf(path: Path) -> Iterator[tuple[str, str, list]]:
    for n, row in jsonl_rows(path, _read_text(path)):  # .gz: read_bytes decompresses
        if not isinstance(row, dict) or not isinstance(row.get("chosen"), str):
            got = readers.type_name(row.get("chosen") if isinstance(row, dict) else row)
            raise InputError(f"{path}: line {n}: expected an object with a 'chosen' transcript "
                             f"(HH-RLHF), got {got}")
        conv = hh_messages(row["chosen"])
        yield hh_first_turn(row["chosen"], path, f"line {n}"), "hh-rlhf", conv


def read_advbench(path: Path) -> Iterator[tuple[str, str, list]]:
    data = readers.parse_yaml(_read_text(path), path)
    if not isinstance(data, dict) or not isinstance(data.get("seeds"), list):
        raise InputError(f"{path}: expected an AdvBench YAML with a 'seeds' list")
    for i, seed in enumerate(data["seeds"]):
        if not isinstance(seed, dict) or not isinstance(seed.get("value"), str):
            raise InputError(f"{path}: seeds.{i}.value: missing or not text")
        cats = seed.get("harm_categories") or []
        cats = [cats] if isinstance(cats, str) else cats
        if not isinstance(cats, list) or not all(isinstance(c, str) for c in cats):
            raise InputError(f"{path}: seeds.{i}.harm_categories: expected a list of names, got "
                             f"{readers.type_name(seed.get('harm_categories'))}")
        yield seed["value"], (cats[0] if cats else "advbench"), []


def read_donotanswer(path: Path) -> Iterator[tuple[str, str, list]]:
    files = sorted(path.glob("*.jsonl")) if readers.is_dir(path) else [path]
    for f in files:
        for n, row in jsonl_rows(f, _read_text(f)):
            yield _field(row, f, f"line {n}"), f.stem, []


def read_lines(path: Path) -> Iterator[tuple[str, str, list]]:
    for line in _read_text(path).splitlines():
        yield line, "", []


def read_file(path: Path) -> Iterator[tuple[str, str, list]]:
    name = path.name.lower()
    if name.endswith(".jsonl.gz") or name.endswith(".json.gz"):
        yield from read_hh_rlhf(path)
    elif name.endswith(".jsonl"):
        for n, row in jsonl_rows(path, _read_text(path)):
            yield _field(row, path, f"line {n}"), _category(row, path, f"line {n}"), []
    elif name.endswith(".json"):
        data = readers.parse_json(_read_text(path), path)
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of prompts")
        for i, row in enumerate(data):
            yield _field(row, path, f"item {i}"), "", []
    elif name.endswith(".csv"):
        text = _read_text(path)
        reader = csv.DictReader(text.splitlines())
        col = next((c for c in TEXT_FIELDS if c in (reader.fieldnames or [])), None)
        if col is None:
            raise InputError(f"{path}: line 1: no prompt column (expected one of "
                             f"{list(TEXT_FIELDS)}, got {reader.fieldnames})")
        for row in reader:
            yield row[col] or "", row.get("category", "") or "", []
    elif name.endswith(".parquet"):
        import pyarrow.parquet as pq

        readers.check_file(path, "prompt file")
        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
        for n, row in enumerate(table.to_pylist()):
            yield _field(row, path, f"row {n}"), _category(row, path, f"row {n}"), []
    elif name.endswith((".yaml", ".yml", ".prompt")):
        yield from read_advbench(path)
    else:  # .txt and anything else: one prompt a line
        yield from read_lines(path)


def read_hub(spec: str) -> Iterator[tuple[str, str, list]]:
    """hf:NAME[:SPLIT[:FIELD]] through `datasets` (needs a network or a local HF cache)."""
    parts = spec.split(":")
    name, split = parts[1], (parts[2] if len(parts) > 2 and parts[2] else "train")
    col = parts[3] if len(parts) > 3 else None
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown name, gated: all are a bad source for us
        raise InputError(f"{spec}: cannot load the hub data set ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from None
    for i, row in enumerate(ds):
        yield (row[col] if col else _field(row, Path(name), f"row {i}")), name, []


def read_xstest(label: str):
    """XSTest (Roettger et al. 2024): 250 safe prompts that look unsafe, 200 unsafe contrasts."""
    def read(path: Path) -> Iterator[tuple[str, str, list]]:
        rows = list(csv.DictReader(_read_text(path).splitlines()))
        if rows and not {"prompt", "label"} <= set(rows[0]):
            raise InputError(f"{path}: line 1: XSTest needs prompt and label columns")
        for row in rows:
            if row["label"] == label:
                yield row["prompt"], row.get("type", "") or "", []
    return read


READERS = {"hh-rlhf": read_hh_rlhf, "harmbench": read_lines, "advbench": read_advbench,
           "donotanswer": read_donotanswer, "xstest-safe": read_xstest("safe"),
           "xstest-unsafe": read_xstest("unsafe")}

SHARED_DATA = Path(os.environ.get("CAI_RAY_SHARED_DATA") or
                   Path(__file__).resolve().parents[3] / "shared" / "data")


def expand(spec: str) -> str:
    """{shared} in a source spec: the public data sets' folder (SHARED_DATA)."""
    return spec.replace("{shared}", str(SHARED_DATA))


def source_path(spec: str) -> Path | None:
    """The file or folder a typed or plain source reads (None: builtin:, hf:)."""
    spec = expand(spec)
    if spec.startswith(("builtin:", "hf:")):
        return None
    kind, _, rest = spec.partition(":")
    return Path(rest) if kind in READERS and rest else Path(spec)


def read_source(spec: str) -> Iterator[tuple[str, str, list]]:
    spec = expand(spec)
    if spec.startswith("builtin:"):
        name = spec.split(":", 1)[1]
        path = BUILTIN_DIR / f"{name}.jsonl"
        if not path.exists():
            known = sorted(p.stem for p in BUILTIN_DIR.glob("*.jsonl"))
            raise InputError(f"{spec}: no built-in prompt set {name!r} (known: {known})")
        return read_file(path)
    if spec.startswith("hf:"):
        return read_hub(spec)
    kind, _, rest = spec.partition(":")
    if kind in READERS and rest:
        path = Path(rest)
        if not readers.exists(path):
            raise InputError(f"{spec}: file not found")
        return READERS[kind](path)
    path = Path(spec)
    if not readers.exists(path):
        raise InputError(f"{spec}: prompt file not found")
    return read_file(path)


def load_prompts(specs: Iterable[str], *, limit: int | None = None, max_chars: int = 2000,
                 on_too_long: str = "skip", dedupe: bool = True) -> PromptSet:
    """Read every source, drop empty / duplicate / over-long prompts (counted), keep `limit`."""
    counts: Counter = Counter()
    seen: set[str] = set()
    out: list[Prompt] = []
    for spec in specs:
        for text, category, conv in read_source(spec):
            counts["read"] += 1
            text = text.strip()
            if not text:
                counts["dropped_empty"] += 1
                continue
            if len(text) > max_chars:
                if on_too_long == "skip":
                    counts["dropped_too_long"] += 1
                    continue
                text, counts["truncated"] = text[:max_chars], counts["truncated"] + 1
            pid = prompt_id(text)
            if dedupe and pid in seen:
                counts["dropped_duplicate"] += 1
                continue
            seen.add(pid)
            out.append(Prompt(pid, text, spec, category, conv))
    if limit is not None and len(out) > limit:
        counts["dropped_limit"] = len(out) - limit
        out = out[:limit]
    counts["kept"] = len(out)
    return PromptSet(out, counts)


def split_heldout(prompts: list[Prompt], fraction: float) -> tuple[list[Prompt], list[Prompt]]:
    """Stable train / held-out split by id hash: a prompt never moves between the two."""
    if fraction <= 0:
        return list(prompts), []
    cut = int(fraction * 10_000)
    held = [p for p in prompts if int(p.id[2:10], 16) % 10_000 < cut]
    keep = [p for p in prompts if int(p.id[2:10], 16) % 10_000 >= cut]
    return keep, held
