"""The checks every route of `cai-ray serve` passes first, as one ASGI middleware: the API key
(401 without touching the model), the body size (413) and, for generation routes, max_tokens (400).

Deployments are built from their class in each replica's process, so the limits reach the
middleware through `configure()`, which each deployment's constructor calls with what the command
line decided. Only the key's SHA-256 travels to the replicas.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass


@dataclass
class Limits:
    key_sha256: str | None = None
    max_request_bytes: int = 1_000_000
    max_tokens: int = 1024


_LIMITS = Limits()
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions")


def configure(limits: dict | Limits | None) -> None:
    global _LIMITS
    if limits is not None:
        _LIMITS = limits if isinstance(limits, Limits) else Limits(**limits)


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def error_body(status: int, message: str, kind: str) -> bytes:
    """The OpenAI error shape, which the openai client turns into its exception's message."""
    return json.dumps({"error": {"message": message, "type": kind, "code": status,
                                 "param": None}}).encode()


def check_key(headers: dict[str, str], limits: Limits) -> str | None:
    """None when the request may pass, else why not."""
    if not limits.key_sha256:
        return None
    auth = headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if scheme.lower() != "bearer" or not given:
        return "missing API key: send `Authorization: Bearer KEY`"
    if not hmac.compare_digest(key_digest(given.strip()), limits.key_sha256):
        return "wrong API key"
    return None


def check_body(path: str, body: bytes, limits: Limits) -> str | None:
    """max_tokens (and max_completion_tokens) within the server's limit; None when fine. A body
    that is not JSON passes through: the route answers it with its own 400."""
    if not path.rstrip("/").endswith(GENERATION_PATHS):
        return None
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    for key in ("max_tokens", "max_completion_tokens"):
        v = data.get(key)
        if isinstance(v, int) and v > limits.max_tokens:
            return f"{key} {v} is above this server's limit of {limits.max_tokens}"
    return None


class Guard:
    """ASGI middleware: key, body size, max_tokens; then the app, with the body replayed."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope = _prefix_is_root(scope)
        limits = _LIMITS
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        why = check_key(headers, limits)
        if why:
            return await _reply(send, 401, why, "authentication_error")
        declared = headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limits.max_request_bytes:
            return await _reply(send, 413, _too_big(limits), "invalid_request_error")
        chunks, size, more = [], 0, True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limits.max_request_bytes:
                return await _reply(send, 413, _too_big(limits), "invalid_request_error")
            chunks.append(chunk)
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        why = check_body(scope.get("path", ""), body, limits)
        if why:
            return await _reply(send, 400, why, "invalid_request_error")
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _prefix_is_root(scope: dict) -> dict:
    """POST /v1/judge reaches an app mounted at /v1/judge as its own root; without this, Starlette
    answers 307 to /v1/judge/ (which clients do not follow for POST)."""
    root = scope.get("root_path", "")
    if root and scope.get("path", "") in ("", root):
        scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
    return scope


def _too_big(limits: Limits) -> str:
    return f"request body is larger than this server's limit of {limits.max_request_bytes} bytes"


async def _reply(send, status: int, message: str, kind: str) -> None:
    body = error_body(status, message, kind)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
