"""Constitutions: principles plus few-shot examples, from our YAML or from published formats.

Our schema (constitutions/*.yaml):

    name: harmless-v1
    critique_revision:   # Bai et al. 2022 sec. 3: a critique request and a revision request
      - {id: harm-general, critique: "...", revision: "..."}
    critique_fewshot:    # worked examples shown before the request
      - {prompt, response, critique, revision, principle: harm-general}
    judge:               # sec. 4: "choose the response that ..." principles
      - {id: harmless-ethical, text: "Which response is ..."}
    judge_fewshot: [{prompt, options: [a, b], answer: A, reasoning, principle}]

Also read: the CAI paper's JSON folder and the Hugging Face CAI recipe's JSON.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cai_ray.errors import InputError
from cai_ray.rundir import readers

CONSTITUTION_DIR = Path(__file__).resolve().parent.parent / "constitutions"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Message(_Strict):
    role: Literal["system", "user", "assistant"]
    content: str


class CritiqueRevision(_Strict):
    id: str = Field(min_length=1)
    critique: str = Field(min_length=1)
    revision: str = Field(min_length=1)


class CritiqueExample(_Strict):
    """A worked critique/revision: `messages` is the conversation ending in the assistant's answer
    (or give `prompt` + `response` for a single turn)."""

    messages: list[Message] = []
    prompt: str | None = None
    response: str | None = None
    critique_request: str | None = None
    critique: str = Field(min_length=1)
    revision_request: str | None = None
    revision: str = Field(min_length=1)
    principle: str | None = None

    @model_validator(mode="after")
    def _turns(self) -> "CritiqueExample":
        if not self.messages:
            if not (self.prompt and self.response):
                raise ValueError("give either messages, or prompt and response")
            self.messages = [Message(role="user", content=self.prompt),
                             Message(role="assistant", content=self.response)]
        if self.messages[-1].role != "assistant":
            raise ValueError("the conversation must end with the assistant's answer")
        return self


class JudgePrinciple(_Strict):
    id: str = Field(min_length=1)
    text: str = Field(min_length=1)


class JudgeExample(_Strict):
    messages: list[Message] = []
    prompt: str | None = None
    options: list[str] = Field(min_length=2, max_length=2)
    answer: Literal["A", "B"]
    reasoning: str | None = None
    principle: str | None = None

    @model_validator(mode="after")
    def _turns(self) -> "JudgeExample":
        if not self.messages:
            if not self.prompt:
                raise ValueError("give either messages or prompt")
            self.messages = [Message(role="user", content=self.prompt)]
        return self


class Constitution(_Strict):
    name: str = "constitution"
    description: str = ""
    critique_revision: list[CritiqueRevision] = []
    critique_fewshot: list[CritiqueExample] = []
    judge: list[JudgePrinciple] = []
    judge_fewshot: list[JudgeExample] = []

    @model_validator(mode="after")
    def _consistent(self) -> "Constitution":
        if not self.critique_revision and not self.judge:
            raise ValueError("no principles: give critique_revision pairs and/or judge principles")
        for field in ("critique_revision", "judge"):
            seen: set[str] = set()
            dup = sorted({p.id for p in getattr(self, field) if p.id in seen or seen.add(p.id)})
            if dup:
                raise ValueError(f"{field}: duplicate ids {dup}")
        known = {p.id for p in self.critique_revision}
        for i, ex in enumerate(self.critique_fewshot):
            if ex.principle and ex.principle not in known:
                raise ValueError(f"critique_fewshot.{i}.principle: {ex.principle!r} is not a "
                                 f"critique_revision id")
        known = {p.id for p in self.judge}
        for i, ex in enumerate(self.judge_fewshot):
            if ex.principle and ex.principle not in known:
                raise ValueError(f"judge_fewshot.{i}.principle: {ex.principle!r} is not a "
                                 f"judge id")
        return self

    # -- use ---------------------------------------------------------------------------------
    def digest(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def require(self, what: Literal["critique_revision", "judge"], source: str = "") -> None:
        """Raise a clear InputError when a stage needs principles this constitution lacks."""
        if not getattr(self, what):
            where = f"{source or self.name}: "
            raise InputError(f"{where}{what}: the constitution has no {what.replace('_', '/')} "
                             f"principles, which this stage needs; add some or choose another "
                             f"constitution (constitution.path)")

    def sample_critiques(self, seed: int, key: str, k: int = 1) -> list[CritiqueRevision]:
        """k principles for `key` (e.g. prompt id + round), the same for the same seed and key,
        whatever order or process asks (Bai et al. 2022: a random principle per revision)."""
        return _rng(seed, key).choices(self.critique_revision, k=k)

    def with_judges(self, judges: list[JudgePrinciple]) -> "Constitution":
        """This constitution judging by `judges` only; a few-shot example tied to a principle
        outside them is dropped (it would show its answer under a question it was not for)."""
        ids = {j.id for j in judges}
        shots = [ex for ex in self.judge_fewshot if not ex.principle or ex.principle in ids]
        return self.model_copy(update={"judge": list(judges), "judge_fewshot": shots})

    def sample_judges(self, seed: int, key: str, k: int = 1) -> list[JudgePrinciple]:
        """k distinct judge principles (fewer if the constitution has fewer), reproducible."""
        rng = _rng(seed, key)
        return rng.sample(self.judge, k=min(k, len(self.judge)))

    def fewshot_critiques(self, seed: int, key: str, k: int) -> list[CritiqueExample]:
        pool = self.critique_fewshot
        return _rng(seed, "fewshot/" + key).sample(pool, k=min(k, len(pool)))


def _rng(seed: int, key: str) -> random.Random:
    h = hashlib.sha256(f"{seed}/{key}".encode()).digest()
    return random.Random(int.from_bytes(h[:8], "big"))


# -- loading ---------------------------------------------------------------------------------


def resolve_path(spec: str) -> Path:
    """A path, or a name of a file in constitutions/ ('default', 'short')."""
    p = Path(spec)
    if readers.exists(p):
        return p
    for cand in (CONSTITUTION_DIR / spec, CONSTITUTION_DIR / f"{spec}.yaml"):
        if cand.exists():
            return cand
    names = sorted(x.stem for x in CONSTITUTION_DIR.glob("*.yaml"))
    raise InputError(f"{spec}: constitution not found (a file or folder path, or one of {names})")


def load_constitution(spec: str | Path) -> Constitution:
    """Load our YAML, a CAI-paper JSON folder, or an HF-recipe JSON; InputError names the field."""
    path = Path(spec)
    try:
        path = resolve_path(str(spec))
        return _load(path)
    except ValidationError as err:
        e = err.errors()[0]
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = "unknown field" if e["type"] == "extra_forbidden" else e["msg"]
        raise InputError(f"{path}: {loc}: {msg}") from None


def _load(path: Path) -> Constitution:
    if readers.is_dir(path):
        return _from_cai_paper(readers.check_dir(path, "constitution folder"))
    if path.suffix == ".json":
        data = readers.read_json(path, "constitution", "constitution")
        if isinstance(data, dict) and "constitutions" in data:
            return _from_hf_recipe(data, path)
    else:
        data = readers.read_yaml(path, "constitution", "constitution")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a mapping with critique_revision / judge lists, got "
                         f"{readers.type_name(data)}")
    return Constitution.model_validate(data)


class _Foreign:
    """Field access into a foreign JSON format (HF recipe, CAI-paper files) that names the file and
    the path of a missing or mistyped field instead of raising KeyError."""

    def __init__(self, path: Path):
        self.path = path

    def get(self, obj, key, where: str, kind: type = str):
        if not isinstance(obj, (dict, list)):
            raise InputError(f"{self.path}: {where}: expected an object or a list, got "
                             f"{readers.type_name(obj)}")
        try:
            value = obj[key]
        except (KeyError, IndexError, TypeError):
            raise InputError(f"{self.path}: {where}.{key}: missing; every entry of this "
                             f"format needs it (add it, or remove the entry)") from None
        if not isinstance(value, kind):
            raise InputError(f"{self.path}: {where}.{key}: expected "
                             f"{'text' if kind is str else kind.__name__}, got "
                             f"{readers.type_name(value)}")
        return value


def _from_hf_recipe(data: dict, path: Path) -> Constitution:
    f = _Foreign(path)
    pairs = [{"id": f"{path.stem}-{i}", "critique": f.get(c, "critic", f"constitutions.{i}"),
              "revision": f.get(c, "revision", f"constitutions.{i}")}
             for i, c in enumerate(f.get(data, "constitutions", "(top level)", list))]
    shots = []
    chats = data.get("system_chat", [])
    if not isinstance(chats, list):
        raise InputError(f"{path}: system_chat: expected a list of conversations, got "
                         f"{readers.type_name(chats)}")
    for j, conv in enumerate(chats):
        # user prompt, assistant answer, user critique request, assistant critique, user revision
        # request, assistant revision
        if not isinstance(conv, list) or len(conv) < 6:
            continue
        text = [f.get(f.get(conv, t, f"system_chat.{j}", dict), "content",
                      f"system_chat.{j}.{t}") for t in range(6)]
        shots.append({"messages": conv[:2], "critique_request": text[2], "critique": text[3],
                      "revision_request": text[4], "revision": text[5]})
    return Constitution.model_validate(
        {"name": path.stem, "critique_revision": pairs, "critique_fewshot": shots})


_TURN = re.compile(r"\n\n(Human|Assistant|CritiqueRequest|Critique|RevisionRequest|Revision):")


def parse_transcript(text: str) -> list[tuple[str, str]]:
    """'\\n\\nHuman: hi\\n\\nAssistant: hello' -> [('Human', 'hi'), ('Assistant', 'hello')]."""
    parts = _TURN.split("\n\n" + text.lstrip("\n"))
    return [(parts[i], parts[i + 1].strip()) for i in range(1, len(parts) - 1, 2)]


def _messages(turns: list[tuple[str, str]]) -> list[dict]:
    role = {"Human": "user", "Assistant": "assistant"}
    return [{"role": role[t], "content": c} for t, c in turns if t in role]


def _from_cai_paper(folder: Path) -> Constitution:
    def read(name, kind):
        p = folder / name
        if not readers.exists(p):
            return kind()
        data = readers.read_json(p, "constitution", "constitution file")
        if not isinstance(data, kind):
            raise InputError(f"{p}: expected a JSON {kind.__name__}, got {type(data).__name__}")
        return data

    f = _Foreign(folder / "CritiqueRevisionInstructions.json")
    pairs = [{"id": k, "critique": _clean(f.get(f.get(v, "prompt", k, list), 0, f"{k}.prompt"),
                                          "CritiqueRequest", "Critique"),
              "revision": _clean(f.get(v, "edit_request", k), "RevisionRequest", "Revision")}
             for k, v in read("CritiqueRevisionInstructions.json", dict).items()]
    shots = []
    for text in read("CritiqueRevisionFewShotPrompts.json", list):
        turns = parse_transcript(text) if isinstance(text, str) else []
        kinds = [t for t, _ in turns]
        if "Critique" not in kinds or "Revision" not in kinds or "CritiqueRequest" not in kinds:
            continue
        cut = kinds.index("CritiqueRequest")
        got = {t: c for t, c in turns[cut:]}
        shots.append({"messages": _messages(turns[:cut]), "critique_request":
                      got.get("CritiqueRequest"), "critique": got["Critique"],
                      "revision_request": got.get("RevisionRequest"), "revision": got["Revision"]})
    judge = [{"id": f"rl{i}", "text": str(t).strip().removesuffix("Options:").strip()}
             for i, t in enumerate(read("RLMadisonInstructions.json", list))]
    judge_shots = []
    f = _Foreign(folder / "RLMadisonFewShotPrompts.json")
    for i, ex in enumerate(read("RLMadisonFewShotPrompts.json", list)):
        good = f.get(f.get(ex, "corrects", str(i), list), 0, f"{i}.corrects")
        bad = f.get(f.get(ex, "incorrects", str(i), list), 0, f"{i}.incorrects")
        options, answer = ([good, bad], "A") if i % 2 == 0 else ([bad, good], "B")
        judge_shots.append({"messages": _messages(parse_transcript(f.get(ex, "prompt", str(i)))
                                                  or []),
                            "options": options, "answer": answer})
    return Constitution.model_validate(
        {"name": f"cai-paper:{folder.name}", "critique_revision": pairs,
         "critique_fewshot": shots, "judge": judge,
         "judge_fewshot": [s for s in judge_shots if s["messages"]]})


def _clean(text: str, *labels: str) -> str:
    text = text.strip()
    for label in labels:
        text = re.sub(rf"^{label}:\s*|\s*{label}:$", "", text).strip()
    return text


def summary(c: Constitution) -> str:
    lines = [f"constitution {c.name}  digest {c.digest()}",
             f"  critique/revision pairs: {len(c.critique_revision)}",
             f"  critique few-shot examples: {len(c.critique_fewshot)}",
             f"  judge principles: {len(c.judge)}",
             f"  judge few-shot examples: {len(c.judge_fewshot)}", ""]
    for p in c.critique_revision:
        lines += [f"[{p.id}]", f"  critique: {p.critique}", f"  revision: {p.revision}"]
    if c.judge:
        lines.append("")
    for j in c.judge:
        lines.append(f"[{j.id}] {j.text}")
    return "\n".join(lines)
