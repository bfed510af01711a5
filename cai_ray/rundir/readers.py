"""One validated reader for every kind of file the system reads: job files, constitutions, prompt
files, training and preference data, labelled pairs, manifests, results and key files. Each checks
what the path is (a regular file: a FIFO, device or folder is refused, never read), caps its size
per kind, parses with a nesting-depth limit (YAML with duplicate keys refused), and validates rows
against a typed model. Every error is one InputError naming the file, line and field.

    text = read_text(path, "prompts", "prompt file")
    for line, row in read_jsonl(path, "data", "sft.data", SftRow): ...
    job = read_yaml(path, "job", "job file")

Size caps (MB) per kind: LIMITS_MB; CAI_RAY_MAX_<KIND>_MB raises one.
"""

from __future__ import annotations

import errno
import gzip
import json
import math
import os
import stat
from pathlib import Path
from typing import Any, ClassVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cai_ray.errors import InputError

MB = 1 << 20
LIMITS_MB = {"job": 1, "constitution": 2, "prompts": 1024, "data": 4096, "manifest": 64,
             "result": 64, "key": 0.0625, "model_config": 4}
MAX_DEPTH = 64
"""Nesting deeper than this in a job file, constitution or data row is refused (no legitimate
file comes near it; a deeper one would otherwise end in RecursionError)."""


def limit_bytes(kind: str) -> int:
    env = os.environ.get(f"CAI_RAY_MAX_{kind.upper()}_MB")
    try:
        mb = float(env) if env else LIMITS_MB[kind]
    except ValueError:
        raise InputError(f"CAI_RAY_MAX_{kind.upper()}_MB={env!r}: give a number of MB") from None
    return int(mb * MB)


def _what_it_is(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def _stat(p: Path, what: str) -> os.stat_result:
    try:
        return p.stat()
    except FileNotFoundError:
        raise InputError(f"{p}: {what} not found") from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(f"{str(p)[:120]}...: {what}: a name in this path is longer than the "
                             f"file system allows (255 bytes); shorten it") from None
        if exc.errno == errno.ENOTDIR:
            raise InputError(f"{p}: {what} not found (a folder of its path is a file)") from None
        if exc.errno == errno.EACCES:
            raise InputError(f"{p}: not readable by this user ({what}); fix its permissions "
                             f"or copy it somewhere readable") from None
        raise InputError(f"{p}: {what}: cannot read ({exc.strerror})") from None


def exists(path: str | Path) -> bool:
    """Path.exists that never raises: False only when the path is known to be missing; a path
    the OS cannot look up (a locked folder, a name over 255 bytes) counts as present, so that
    reading it names the real problem."""
    try:
        return Path(path).exists()
    except OSError:
        return True


def check_file(path: str | Path, what: str) -> Path:
    """The path of a regular file, or InputError saying what it is instead."""
    return _regular(path, what)[0]


def _regular(path: str | Path, what: str) -> tuple[Path, os.stat_result]:
    p = Path(path)
    st = _stat(p, what)
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{p}: {what} is {_what_it_is(st.st_mode)}, not a regular file; give a "
                         f"file")
    return p, st


def check_dir(path: str | Path, what: str) -> Path:
    p = Path(path)
    st = _stat(p, what)
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{p}: {what} is {_what_it_is(st.st_mode)}, not a folder")
    return p


def check_output(path: str | Path, what: str) -> Path:
    """A file the command will write, checked before any work: its folder exists and is
    writable, and the path is not a folder."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if is_dir(p):
        raise InputError(f"{p}: {what} is a folder; give a file name")
    if not is_dir(parent):
        raise InputError(f"{p}: {what}: the folder {parent} does not exist; create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{p}: {what}: the folder {parent} is not writable by this user")
    return p


def is_dir(p: str | Path) -> bool:
    """Path.is_dir that answers False, not OSError, for a path it cannot look up."""
    try:
        p = Path(p)
        return p.is_dir()
    except OSError:
        return False


def read_bytes(path: str | Path, kind: str, what: str) -> bytes:
    """The bytes of a regular file under its kind's size cap (gzip-compressed files are read
    and capped uncompressed)."""
    p, st = _regular(path, what)
    cap = limit_bytes(kind)
    if st.st_size > cap:  # refused from its size, without reading a byte
        raise _too_big(p, what, kind, cap)
    try:
        with open(p, "rb") as fh:
            data = fh.read(cap + 1)  # also bounds a file that grows while it is read
    except PermissionError:
        raise InputError(f"{p}: not readable by this user ({what}); fix its permissions or "
                         f"copy it somewhere readable") from None
    except OSError as exc:
        raise InputError(f"{p}: {what}: cannot read ({exc.strerror})") from None
    if p.name.endswith(".gz") and len(data) <= cap:
        try:
            with gzip.open(p, "rb") as fh:
                data = fh.read(cap + 1)
        except (OSError, EOFError) as exc:
            raise InputError(f"{p}: {what} is not a complete gzip file ({exc}); re-download "
                             f"it") from None
    if len(data) > cap:
        raise _too_big(p, what, kind, cap)
    return data


def _too_big(p: Path, what: str, kind: str, cap: int) -> InputError:
    return InputError(f"{p}: {what} is over the {cap / MB:g} MB limit for {kind} files; check "
                      f"the path, or raise CAI_RAY_MAX_{kind.upper()}_MB")


def decode(data: bytes, p: Path | str, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise InputError(f"{p}: line {line}: not UTF-8 text (byte {exc.start} of the {what}); "
                         f"re-save it as UTF-8") from None


def read_text(path: str | Path, kind: str, what: str) -> str:
    return decode(read_bytes(path, kind, what), path, what)


def check_depth(obj: Any, p: Path | str, where: str = "") -> Any:
    """obj, or InputError when it nests deeper than MAX_DEPTH (YAML aliases may make it cyclic:
    each object is visited once)."""
    stack, seen = [(obj, 0)], set()
    while stack:
        x, depth = stack.pop()
        if not isinstance(x, (dict, list)) or id(x) in seen:
            continue
        if depth >= MAX_DEPTH:
            raise InputError(f"{p}: {where}nested more than {MAX_DEPTH} levels deep; no valid "
                             f"file is")
        seen.add(id(x))
        stack += [(v, depth + 1) for v in (x.values() if isinstance(x, dict) else x)]
    return obj


def parse_json(text: str, p: Path | str, line: int | None = None) -> Any:
    where = f"line {line}: " if line else ""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        at = line or exc.lineno
        raise InputError(f"{p}: line {at}: invalid JSON ({exc.msg}); the file may be "
                         f"truncated") from None
    except RecursionError:
        raise InputError(f"{p}: {where}nested more than {MAX_DEPTH} levels deep; no valid file "
                         f"is") from None
    return check_depth(obj, p, where)


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """safe_load (libyaml's parser where installed: 20x the pure-Python one) that refuses a key
    given twice in one mapping."""


def _no_duplicates(loader, node, deep=False):
    seen = set()
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        key = (key_node.tag, key_node.value)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key_node.value!r} (the later value would silently "
                f"replace the earlier): keep one", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def parse_yaml(text: str, p: Path | str) -> Any:
    try:
        obj = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = str(getattr(exc, "problem", exc))
        if problem.startswith("duplicate key"):
            raise InputError(f"{p}:{where}: {problem}") from None
        raise InputError(f"{p}:{where}: invalid YAML ({problem})") from None
    except RecursionError:
        raise InputError(f"{p}: nested more than {MAX_DEPTH} levels deep; no valid file "
                         f"is") from None
    return check_depth(obj, p)


def read_json(path: str | Path, kind: str, what: str) -> Any:
    return parse_json(read_text(path, kind, what), path)


def read_yaml(path: str | Path, kind: str, what: str) -> Any:
    return parse_yaml(read_text(path, kind, what), path)


def read_jsonl(path: str | Path, kind: str, what: str, model: type[BaseModel] | None = None
               ) -> list[tuple[int, Any]]:
    """(line number, row) of every non-empty line, each row validated by `model` when given."""
    p = Path(path)
    out = []
    for n, line in enumerate(read_text(p, kind, what).splitlines(), 1):
        if line.strip():
            row = parse_json(line, p, n)
            out.append((n, validate(row, model, p, f"line {n}") if model else row))
    return out


# -- typed rows ----------------------------------------------------------------------------------

class Row(BaseModel):
    """A row of a data file: typed fields, others kept."""

    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)
    expected: ClassVar[str] = "an object"
    """How an error names what this row (or element) should be."""


class Message(Row):
    expected: ClassVar[str] = "an object with role and content"
    role: str
    content: str


def type_name(value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # nan, inf
    return {str: "a string", bool: "true/false", int: "a number", float: "a number",
            list: "a list", dict: "an object", type(None): "null"}.get(type(value), "a value")


def _loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_EXPECTED = {"string_type": "text", "int_type": "an integer", "float_type": "a number",
             "bool_type": "true or false", "list_type": "a list", "dict_type": "an object",
             "int_from_float": "an integer", "finite_number": "a finite number"}


def describe(err: ValidationError, model: type[BaseModel]) -> str:
    """'messages[0]: expected an object with role and content, got a string' for the first."""
    e = err.errors()[0]
    where, got = _loc(e["loc"]), type_name(e.get("input"))
    if e["type"] == "missing":
        return f"{where}: missing"
    if e["type"] in ("model_type", "model_attributes_type"):
        target = _model_at(model, e["loc"])
        return f"{where + ': ' if where else ''}expected {target.expected}, got {got}"
    if e["type"] in _EXPECTED:
        return f"{where}: expected {_EXPECTED[e['type']]}, got {got}"
    return f"{where}: {e['msg'].removeprefix('Value error, ')}"


def _model_at(model: type[BaseModel], loc: tuple) -> type[Row]:
    """The row model an error location points at (a nested Message, or the row itself)."""
    import typing

    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            break
        ann = field.annotation
        for arg in (ann, *typing.get_args(ann), *[a for x in typing.get_args(ann)
                                                  for a in typing.get_args(x)]):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                current = arg
                break
    return current if isinstance(current, type) and issubclass(current, Row) else Row


def validate(row: Any, model: type[BaseModel], p: Path | str, where: str) -> Any:
    try:
        return model.model_validate(row)
    except ValidationError as err:
        raise InputError(f"{p}: {where}: {describe(err, model)}") from None
