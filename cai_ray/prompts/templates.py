"""Prompts the method sends to the model, in two forms.

chat:        role/content messages, rendered by the model's own chat template (chat models).
transcript:  the paper's plain text, `Human:` / `Assistant:` / `CritiqueRequest:` / `Critique:` /
             `RevisionRequest:` / `Revision:` (base models), Bai et al. 2022 appendix.

Every builder returns an engines.base.Request plus, for transcripts, the stop strings.
"""

from __future__ import annotations

from dataclasses import dataclass

from cai_ray.constitution import CritiqueExample, CritiqueRevision, JudgeExample, JudgePrinciple
from cai_ray.generation import Request

TRANSCRIPT_STOPS = ["\n\nHuman:", "\n\nCritiqueRequest:", "\n\nRevisionRequest:", "\n\n---"]


@dataclass
class Turn:
    """One critique/revision round so far (revision may be pending)."""

    principle: CritiqueRevision
    critique: str | None = None
    revision: str | None = None


def _ex_critique_req(ex: CritiqueExample, fallback: str) -> str:
    return ex.critique_request or fallback


def _ex_revision_req(ex: CritiqueExample, fallback: str) -> str:
    return ex.revision_request or fallback


# -- chat form ---------------------------------------------------------------------------------


def chat_answer(rid: str, conversation: list[dict]) -> Request:
    return Request(rid, messages=list(conversation))


def chat_critique(rid: str, conversation: list[dict], answer: str, turn: Turn,
                  fewshot: list[CritiqueExample]) -> Request:
    """Few-shot rounds, then the conversation with `answer` and the critique request."""
    msgs: list[dict] = []
    for ex in fewshot:
        msgs += [m.model_dump() for m in ex.messages]
        msgs += [{"role": "user", "content": _ex_critique_req(ex, turn.principle.critique)},
                 {"role": "assistant", "content": ex.critique},
                 {"role": "user", "content": _ex_revision_req(ex, turn.principle.revision)},
                 {"role": "assistant", "content": ex.revision}]
    msgs += list(conversation) + [{"role": "assistant", "content": answer},
                                  {"role": "user", "content": turn.principle.critique}]
    return Request(rid, messages=msgs)


def chat_revision(rid: str, critique_req: Request, turn: Turn) -> Request:
    msgs = list(critique_req.messages) + [{"role": "assistant", "content": turn.critique or ""},
                                          {"role": "user", "content": turn.principle.revision}]
    return Request(rid, messages=msgs)


# -- transcript form ---------------------------------------------------------------------------


def transcript_conversation(conversation: list[dict]) -> str:
    label = {"user": "Human", "assistant": "Assistant", "system": "Human"}
    return "".join(f"\n\n{label[m['role']]}: {m['content']}" for m in conversation)


def transcript_answer(rid: str, conversation: list[dict]) -> Request:
    return Request(rid, text=transcript_conversation(conversation).lstrip("\n") +
                   "\n\nAssistant:")


def _transcript_shot(ex: CritiqueExample, p: CritiqueRevision) -> str:
    return (transcript_conversation([m.model_dump() for m in ex.messages]) +
            f"\n\nCritiqueRequest: {_ex_critique_req(ex, p.critique)}\n\nCritique: {ex.critique}"
            f"\n\nRevisionRequest: {_ex_revision_req(ex, p.revision)}\n\nRevision: {ex.revision}")


def transcript_critique(rid: str, conversation: list[dict], answer: str, turn: Turn,
                        fewshot: list[CritiqueExample]) -> Request:
    shots = "".join(_transcript_shot(ex, turn.principle) + "\n\n---" for ex in fewshot)
    text = (shots + transcript_conversation(conversation + [{"role": "assistant",
                                                             "content": answer}]) +
            f"\n\nCritiqueRequest: {turn.principle.critique}\n\nCritique:")
    return Request(rid, text=text.lstrip("\n"))


def transcript_revision(rid: str, critique_req: Request, turn: Turn) -> Request:
    text = (critique_req.text + f" {turn.critique}\n\nRevisionRequest: "
            f"{turn.principle.revision}\n\nRevision:")
    return Request(rid, text=text)


# -- dispatch by form --------------------------------------------------------------------------


def answer_request(form: str, rid: str, conversation: list[dict]) -> Request:
    if form == "chat":
        return chat_answer(rid, conversation)
    return transcript_answer(rid, conversation)


def critique_request(form: str, rid: str, conversation: list[dict], answer: str, turn: Turn,
                     fewshot: list[CritiqueExample]) -> Request:
    fn = chat_critique if form == "chat" else transcript_critique
    return fn(rid, conversation, answer, turn, fewshot)


def revision_request(form: str, rid: str, critique_req: Request, turn: Turn) -> Request:
    fn = chat_revision if form == "chat" else transcript_revision
    return fn(rid, critique_req, turn)


def stops(form: str) -> list[str]:
    return [] if form == "chat" else TRANSCRIPT_STOPS


# -- the judge (RLAIF, Bai et al. 2022 sec. 4.1) -----------------------------------------------


def _judge_block(conversation: list[dict], principle_text: str, a: str, b: str) -> str:
    convo = "\n\n".join(f"{'Human' if m['role'] != 'assistant' else 'Assistant'}: {m['content']}"
                        for m in conversation)
    return (f"Consider the following conversation between a human and an assistant:\n\n{convo}\n\n"
            f"{principle_text}\n\nOptions:\n(A) {a}\n(B) {b}")


def judge_request(rid: str, conversation: list[dict], principle: JudgePrinciple, a: str, b: str,
                  fewshot: list[JudgeExample], fewshot_principles: list[str],
                  cot: str | None = None, chain_of_thought: bool = False,
                  answer_prefix: str = "The answer is: (", open_answer: bool = True) -> Request:
    """A multiple-choice request whose next token is the option letter: the assistant's turn is
    left open after `answer_prefix` (judges/base.py option_format picks one that tokenizes cleanly).
    With chain_of_thought, the first call (cot None) asks for reasoning; the second appends it
    and asks for the letter. open_answer False (the generative judge): the assistant's turn is
    left for the judge to write (after "Let's think step by step:" with chain_of_thought).

    Laid out so that the engines' prefix cache shares what it can: the few-shot block is the same
    for every judgement (example i asks `fewshot_principles[i]`, not this request's), then the
    conversation (shared by both orders and every principle), then Bai et al.'s principle and
    options, in the paper's order (the principle after the options shares more, but agreed less
    with human labels)."""
    msgs: list[dict] = []
    for ex, ex_principle in zip(fewshot, fewshot_principles, strict=True):
        msgs += [{"role": "user", "content": _judge_block([m.model_dump() for m in ex.messages],
                                                          ex_principle, *ex.options)},
                 {"role": "assistant", "content":
                  (f"Let's think step by step: {ex.reasoning}\n" if chain_of_thought and
                   ex.reasoning else "") + _answer(answer_prefix, ex.answer)}]
    msgs.append({"role": "user", "content": _judge_block(conversation, principle.text, a, b)})
    if not open_answer and not chain_of_thought:
        return Request(rid, messages=msgs)
    if chain_of_thought and (cot is None or not open_answer):
        msgs.append({"role": "assistant", "content": "Let's think step by step:"})
        return Request(rid, messages=msgs, continue_final=True)
    prefix = f"Let's think step by step: {cot.strip()}\n" if chain_of_thought else ""
    msgs.append({"role": "assistant", "content": prefix + answer_prefix})
    return Request(rid, messages=msgs, continue_final=True)


def _answer(prefix: str, letter: str) -> str:
    sep = "" if prefix.endswith(("(", " ")) else " "
    close = ")" if prefix.endswith("(") else ""
    return f"{prefix}{sep}{letter}{close}"
