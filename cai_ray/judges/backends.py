"""Where a judge runs: a backend opens the pool its method asks (engine actors of ours, or any
OpenAI-compatible server), checks its part of the `judge:` section at load time, and says what
it needs of the cluster. Register one with register_backend(Backend subclass instance).
"""

from __future__ import annotations

from typing import Any, Callable

from cai_ray.errors import InputError

BACKENDS: dict[str, "Backend"] = {}


def register_backend(backend: "Backend") -> "Backend":
    BACKENDS[backend.name] = backend
    return backend


class Backend:
    name = "base"
    own_engines = False
    """Runs on engine actors of ours (the cluster must hold them; `cai-ray serve --judge` can
    serve it)."""

    def check(self, cfg) -> None:
        """Load-time checks of this backend's fields; InputError naming judge.<field>."""

    def start_actors(self, cfg, model_path: str, actors: Callable[[str], Any]):
        """Engine actors of the judge's own for model_path, or None where it needs none."""
        return None

    def open(self, cfg, model_path: str, shared_pool, actors) -> tuple[Any, bool]:
        """(the pool the judge asks, whether close() shuts it down)."""
        raise NotImplementedError

    def describe(self, cfg, model: str) -> str:
        return f"{cfg.method} {model}"


class EngineBackend(Backend):
    """Our engine actors: judge.model on actors of its own (judge.engine's resources), else the
    pool the caller shares (the policy's, which then judges itself)."""

    name = "engines"
    own_engines = True

    def check(self, cfg) -> None:
        if cfg.url:
            raise InputError(f"judge.url: is for backend http (backend is {cfg.backend}); set "
                             f"judge.backend: http, or drop url")

    def start_actors(self, cfg, model_path: str, actors):
        return actors(model_path)

    def open(self, cfg, model_path: str, shared_pool, actors):
        if shared_pool is not None:
            return shared_pool, False
        return actors(model_path), True


class HttpBackend(Backend):
    """Any OpenAI-compatible server with /v1/completions (log-probabilities for logprob): one
    in-process engine that sends token ids (engines/http_engine.py). judge.model names the
    served model, whose tokenizer builds the prompts."""

    name = "http"

    def check(self, cfg) -> None:
        if not cfg.url:
            raise InputError("judge.url: backend http needs the server's base URL, for example "
                             "http://127.0.0.1:8000/v1")
        if not cfg.url.startswith(("http://", "https://")):
            raise InputError(f"judge.url: {cfg.url!r}: give an http:// or https:// base URL")
        if not cfg.model:
            raise InputError("judge.model: backend http needs the served model's name or "
                             "folder, whose tokenizer builds the prompts")
        if cfg.engine:
            raise InputError("judge.engine: a judge behind a url has no engine actors of ours")
        from cai_ray.engines.http_engine import headers_for, served_model

        served_model(cfg.url, headers_for(cfg.api_key_env))

    def open(self, cfg, model_path: str, shared_pool, actors):
        from cai_ray.engines.http_engine import HttpEngine
        from cai_ray.engines.local import LocalPool

        return LocalPool(HttpEngine(cfg.url, model_path, api_key_env=cfg.api_key_env)), False

    def describe(self, cfg, model: str) -> str:
        return f"{cfg.method} via {cfg.url} ({cfg.model})"


register_backend(EngineBackend())
register_backend(HttpBackend())
