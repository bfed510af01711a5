"""Scoring services beside the policy, each its own Serve application and resources:

    POST /v1/score  {"pairs": [{"prompt": str, "response": str}, ...]}        (or "conversations")
                 -> {"model": id, "scores": [float, ...]}        the reward model's scalar rewards
    POST /v1/judge  {"conversation": [...] | "prompt": str, "answers": [a, b],
                     "principles": [id, ...] (optional), "id": str (optional)}
                 -> {"p_first": P(a is better), "per_principle": {id: p}, "orders": {id: [p, p]},
                     "order_disagreements": n, "principles": [...]}

The reward model is scored exactly as the RL stage scores it (rewards/model.py RewardScorer); the
judge is the run's `judge:` section (cai_ray/judges) over one in-process engine, so an item
id gives the principles the preferences stage drew for it.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cai_ray.serve import guard
from cai_ray.serve.ingress import replica_grpc_on_node_ip

MAX_ITEMS = 256


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pair(_Body):
    prompt: str
    response: str


class ScoreRequest(_Body):
    model: str | None = None
    pairs: list[Pair] | None = None
    conversations: list[list[dict]] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.pairs is None) == (self.conversations is None):
            raise ValueError("give exactly one of `pairs` or `conversations`")
        n = len(self.pairs or self.conversations or [])
        if not 1 <= n <= MAX_ITEMS:
            raise ValueError(f"give 1 to {MAX_ITEMS} items (got {n})")
        return self

    def as_conversations(self) -> list[list[dict]]:
        if self.conversations is not None:
            return self.conversations
        return [[{"role": "user", "content": p.prompt},
                 {"role": "assistant", "content": p.response}]
                for p in self.pairs]


class JudgeRequest(_Body):
    model: str | None = None
    id: str = "request"
    conversation: list[dict] | None = None
    prompt: str | None = None
    answers: list[str] = Field(min_length=2, max_length=2)
    principles: list[str] | None = None

    @model_validator(mode="after")
    def _one_of(self):
        if (self.conversation is None) == (self.prompt is None):
            raise ValueError("give exactly one of `conversation` or `prompt`")
        return self

    def messages(self) -> list[dict]:
        return self.conversation or [{"role": "user", "content": self.prompt}]


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(guard.Guard)
    from fastapi.exceptions import RequestValidationError
    from starlette.responses import JSONResponse

    @app.exception_handler(RequestValidationError)
    async def _bad(request, exc):  # the OpenAI error shape, 400 like the policy's routes
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        msg = f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg")
        return JSONResponse(status_code=400, content={"error": {
            "message": msg, "type": "invalid_request_error", "code": 400, "param": where}})

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        return JSONResponse(status_code=exc.status_code, content={"error": {
            "message": str(exc.detail), "type": "invalid_request_error", "code": exc.status_code,
            "param": None}})

    return app


score_app, judge_app = _app(), _app()


def _check_model(asked: str | None, served: str) -> None:
    if asked not in (None, served):
        raise HTTPException(404, f"model {asked!r} is not served here (this route serves "
                                 f"{served!r})")


class RewardServer:
    """The reward model as a scoring service (one replica: the model is small and CPU-bound)."""

    def __init__(self, model_path: str, model_id: str, limits: dict, max_len: int = 1024):
        from cai_ray.rewards.model import RewardScorer

        guard.configure(limits)
        replica_grpc_on_node_ip()
        self.scorer = RewardScorer(model_path, max_len=max_len)
        self.model_id = model_id
        self.lock = asyncio.Lock()  # one forward at a time; requests queue here

    async def score(self, body: ScoreRequest) -> dict:
        _check_model(body.model, self.model_id)
        async with self.lock:
            scores = await asyncio.to_thread(self.scorer.score, body.as_conversations())
        return {"object": "score", "model": self.model_id, "scores": scores}

    def check_health(self) -> None:
        pass


class JudgeServer:
    """The constitutional judge as a service over one in-process engine."""

    def __init__(self, spec, model_id: str, limits: dict, engine_kwargs: dict,
                 backend: str = "vllm"):
        from cai_ray.constitution import load_constitution
        from cai_ray.engines.factory import make_engine
        from cai_ray.engines.local import LocalPool

        guard.configure(limits)
        replica_grpc_on_node_ip()
        self.engine = make_engine(backend, spec.model, **engine_kwargs)
        self.pool = LocalPool(self.engine)
        self.const = load_constitution(spec.constitution)
        self.spec, self.model_id = spec, model_id
        self.lock = asyncio.Lock()

    def _judge(self, principles: list[str] | None):
        from cai_ray import judges

        const = self.const
        if principles:
            known = {p.id for p in const.judge}
            bad = [p for p in principles if p not in known]
            if bad:
                raise HTTPException(400, f"principles: unknown id(s) {bad}; this constitution's "
                                         f"judge principles are {sorted(known)}")
            const = const.with_judges([p for p in const.judge if p.id in principles])
        return judges.build(self.spec.judge, const, pool=self.pool, tokenizer=self.engine.tokenizer,
                            seed=self.spec.seed,  # every named principle, each pair
                            principles_per_pair=len(principles) if principles else None)

    async def judge(self, body: JudgeRequest) -> dict:
        from cai_ray.judges import JudgeItem

        _check_model(body.model, self.model_id)
        judge = self._judge(body.principles)
        item = JudgeItem(body.id, body.messages(), body.answers[0], body.answers[1])
        async with self.lock:
            (jd,) = await asyncio.to_thread(judge.label, [item])
        return {"object": "judgement", "model": self.model_id, "id": body.id,
                "p_first": jd.p_first, "per_principle": jd.per_principle, "orders": jd.orders,
                "order_disagreements": jd.disagreements, "principles": sorted(jd.per_principle),
                "reasoning": jd.reasoning}

    def check_health(self) -> None:
        self.engine.ping()


def _routes():
    """Bind the routes onto the two apps (module level, so replicas import them by reference)."""
    from ray import serve

    @serve.ingress(score_app)
    class ScoreIngress(RewardServer):
        @score_app.post("/")
        async def post(self, body: ScoreRequest) -> dict:
            return await self.score(body)

    @serve.ingress(judge_app)
    class JudgeIngress(JudgeServer):
        @judge_app.post("/")
        async def post(self, body: JudgeRequest) -> dict:
            return await self.judge(body)

    return ScoreIngress, JudgeIngress


ScoreIngress, JudgeIngress = _routes()


def build_score_app(reward_model: str, model_id: str, limits: guard.Limits, cpus: float,
                    gpus: float):
    from ray import serve

    return serve.deployment(ScoreIngress, name="RewardModel", num_replicas=1,
                            ray_actor_options={"num_cpus": cpus, "num_gpus": gpus},
                            max_ongoing_requests=64).bind(reward_model, model_id, vars(limits))


def build_judge_app(spec, model_id: str, limits: guard.Limits, cpus: float, gpus: float,
                    engine_kwargs: dict):
    from ray import serve

    return serve.deployment(JudgeIngress, name="Judge", num_replicas=1,
                            ray_actor_options={"num_cpus": cpus, "num_gpus": gpus},
                            max_ongoing_requests=64).bind(spec, model_id, vars(limits),
                                                          engine_kwargs)
