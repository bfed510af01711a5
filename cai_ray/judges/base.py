"""What every judge shares (Bai et al. 2022 sec. 4.1): the items it compares, the judgements it
returns, the option-token format, the principles and few-shot examples it is shown, and how the
per-principle, per-order probabilities become one soft label (algos/labels.py). A method
(logprob.py, generative.py) says how one principle and order is decided.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cai_ray.algos import labels as L
from cai_ray.constitution import Constitution
from cai_ray.prompts import templates as T

# Ways to end the judge's answer so that the option letter is one token of its own; the first that
# tokenizes cleanly for both letters wins (byte-level BPEs may merge "(A" into one token).
FORMATS = [("The answer is: (", "{}"), ("The answer is:", " {}"), ("The answer is: ", "{}"),
           ("Answer:", " {}")]


@dataclass(frozen=True)
class OptionFormat:
    prefix: str
    token_a: int
    token_b: int


def option_format(tokenizer) -> OptionFormat:
    """Find a prefix after which ' A'/'A' and ' B'/'B' are single, distinct tokens."""
    for prefix, fmt in FORMATS:
        base = tokenizer.encode("Sure. " + prefix, add_special_tokens=False)
        ids = []
        for letter in "AB":
            full = tokenizer.encode("Sure. " + prefix + fmt.format(letter),
                                    add_special_tokens=False)
            if full[:len(base)] != base or len(full) != len(base) + 1:
                break
            ids.append(full[-1])
        if len(ids) == 2 and ids[0] != ids[1]:
            return OptionFormat(prefix, ids[0], ids[1])
    raise ValueError("no judge answer format gives single-token options for this tokenizer")


@dataclass
class JudgeItem:
    id: str
    conversation: list[dict]
    first: str
    second: str


@dataclass
class Judgement:
    id: str
    p_first: float
    """P(first answer is better), ensembled over principles, averaged over orders."""
    per_principle: dict[str, float] = field(default_factory=dict)
    orders: dict[str, list[float]] = field(default_factory=dict)
    """principle id -> [P(first | first shown as A), P(first | first shown as B)]."""
    disagreements: int = 0
    reasoning: dict[str, str] = field(default_factory=dict)
    unparsed: int = 0
    """Generative judge: verdicts that named neither answer (counted as ties)."""


class Judge:
    """A judge over a pool (engine actors, an in-process engine, or a server's): label(items) ->
    one Judgement per item. Subclasses implement label; `method` is their registry name."""

    method = "base"

    def __init__(self, pool, tokenizer, constitution: Constitution, *, seed: int = 0,
                 principles_per_pair: int = 2, num_fewshot: int = 1, both_orders: bool = True,
                 chain_of_thought: bool = False, cot_max_new_tokens: int = 96,
                 batch_size: int = 16, max_in_flight: int = 2):
        constitution.require("judge")
        self.pool, self.const, self.seed = pool, constitution, seed
        self.k, self.orders = principles_per_pair, (0, 1) if both_orders else (0,)
        self.fewshot = constitution.judge_fewshot[:num_fewshot]
        # fixed per example, so the few-shot block is one prefix shared by every judgement
        self.fewshot_principles = [self._principle_text(ex.principle) for ex in self.fewshot]
        self.cot, self.cot_tokens = chain_of_thought, cot_max_new_tokens
        self.batch_size, self.max_in_flight = batch_size, max_in_flight
        self.fmt = option_format(tokenizer)

    def _principle_text(self, pid: str | None) -> str:
        by_id = {p.id: p.text for p in self.const.judge}
        if pid and pid not in by_id:
            raise ValueError(f"judge few-shot example's principle {pid!r} is not one of this "
                             f"constitution's judge principles {sorted(by_id)}; use "
                             f"Constitution.with_judges to narrow the principles")
        return by_id[pid] if pid else self.const.judge[0].text

    def _request(self, item: JudgeItem, principle, order: int, cot: str | None):
        a, b = (item.first, item.second) if order == 0 else (item.second, item.first)
        rid = f"{item.id}|{principle.id}|{order}"
        return T.judge_request(rid, item.conversation, principle, a, b, self.fewshot,
                               self.fewshot_principles, cot=cot, chain_of_thought=self.cot,
                               answer_prefix=self.fmt.prefix)

    @classmethod
    def options(cls, cfg) -> dict:
        """This method's own keyword arguments from the `judge:` section."""
        return {}

    def label(self, items: list[JudgeItem]) -> list[Judgement]:
        raise NotImplementedError

    def jobs(self, items: list[JudgeItem]) -> list[tuple]:
        """(item, principle, order) of every decision the items need."""
        return [(it, p, o) for it in items
                for p in self.const.sample_judges(self.seed, it.id, self.k) for o in self.orders]

    def _combine(self, it: JudgeItem, probs: dict, cots: dict) -> Judgement:
        per, orders, disagree = {}, {}, 0
        pids = sorted({k[1] for k in probs if k[0] == it.id})
        for pid in pids:
            ps = [probs[(it.id, pid, o)] for o in self.orders]
            orders[pid] = ps
            if len(ps) == 2:
                disagree += L.disagrees(ps[0], ps[1])
            p = L.order_average(*ps) if len(ps) == 2 else ps[0]
            per[pid] = L.clamp(p) if self.cot else p
        return Judgement(it.id, L.ensemble(list(per.values())), per, orders, disagree,
                         {f"{k[1]}|{k[2]}": v for k, v in cots.items() if k[0] == it.id})
