"""Remote engines: a deployment served by replicas of an inference server, reached over HTTP.

:class:`RemoteEngine` owns what every wire dialect shares: the replicas' router (``engines/router.py``), probing
their capabilities when the deployment loads, and the one generation loop that retries before the first token and
**resumes after it**. Each attempt streams from one replica; when that replica dies mid-stream (refused or reset
connection, a 5xx, an error event, no chunk for ``stall_timeout_s``) the loop asks the router for another and sends it
the prompt plus the tokens already delivered, with the token budget that is left, so the caller sees one unbroken
stream: nothing repeated, nothing missing (a greedy stream ends with exactly the text of an undisturbed run when the
dialect gives token ids, as llama-server's does; the OpenAI dialect resumes from the text). Chunks whose tokens do
not yet decode to text (half a UTF-8 character) are held back until they do, so a resumption never splits one.

A 429 or 503 from a replica is honoured (its ``Retry-After``: that replica gets nothing until then) and the request
tries another; when every replica is throttling the caller gets :class:`ReplicaThrottledError` (the service layer
sends ThrottlingException or ServiceUnavailableException). Queueing and admission are the scheduler's, in front.

The dialects (``remote_llamaserver.py``, ``remote_openai.py``) implement :meth:`RemoteEngine._probe`,
:meth:`RemoteEngine._prepare` and :meth:`RemoteEngine._stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import time
from abc import abstractmethod
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from llamarock.engines.base import Engine
from llamarock.engines.router import Endpoint, Replica, Router, RouterPolicy, affinity_key
from llamarock.errors import (
    ContextOverflowError,
    EmptyPromptError,
    EngineError,
    EngineNotReadyError,
    ReplicaThrottledError,
    ReplicaUnavailableError,
)
from llamarock.types import EngineInfo, GenerationChunk, GenerationRequest, StopReason

log = logging.getLogger(__name__)

DEFAULT_RETRY_AFTER_S = 1.0
LOAD_POLL_S = 0.5


@dataclass(frozen=True)
class RemoteConfig:
    """A remote deployment: its replicas, the model name to send them, and how to route."""

    endpoints: tuple[Endpoint, ...]
    model: str | None = None                 # the served model's name on the replicas (OpenAI ``model``)
    context_length: int | None = None        # cap below what the replicas report
    chat_format: str = "auto"                # llama3, llama2, other; auto: from the replica's chat template
    supports_images: bool | None = None      # None: as probed
    load_timeout_s: float = 60.0             # how long load() waits for a first replica to answer
    policy: RouterPolicy = field(default_factory=RouterPolicy)


@dataclass
class Prompt:
    """A request made ready for the wire: exactly one of ``tokens`` and ``text``, or ``messages`` (a chat call)."""

    count: int
    tokens: list[int] | None = None
    text: str | None = None
    messages: list[dict[str, Any]] | None = None


@dataclass
class Piece:
    """What one streamed event of a replica adds."""

    text: str = ""
    tokens: list[int] | None = None          # token ids, when the dialect sends them
    count: int = 0                           # tokens this piece adds
    stop_reason: StopReason | None = None
    cached_tokens: int | None = None
    usage_completion: int | None = None      # the attempt's completion tokens, when the replica reports them


class ReplicaFailure(Exception):
    """An attempt failed on its replica; another may take over. ``dead``: the replica itself is gone."""

    def __init__(self, reason: str, *, dead: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.dead = dead


class ReplicaBusy(Exception):
    """A replica answered 429 or 503; ``retry_after_s`` is how long it asked to be left alone."""

    def __init__(self, status: int, retry_after_s: float, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.retry_after_s = retry_after_s


def retry_after_seconds(value: str | None) -> float:
    """A Retry-After header's seconds (delta-seconds or an HTTP date); the default when absent or unreadable."""
    if not value:
        return DEFAULT_RETRY_AFTER_S
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return DEFAULT_RETRY_AFTER_S
    return max(0.0, when.timestamp() - time.time())


def chat_format_of(template: str | None) -> str:
    """Name the chat format a chat template implements: llama3, llama2, chatml or other."""
    if not template:
        return "other"
    if "<|start_header_id|>" in template:
        return "llama3"
    if "[INST]" in template:
        return "llama2"
    if "<|im_start|>" in template:
        return "chatml"
    return "other"


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """The JSON objects of a server-sent event stream (``data: {...}`` lines) until ``[DONE]`` or the end; an
    ``error`` event (or an unreadable one) is a failure of the replica."""
    async for line in response.aiter_lines():
        if line.startswith("error:"):
            raise ReplicaFailure(f"the replica sent an error event: {line[6:].strip()[:300]}")
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            return
        try:
            event = json.loads(data)
        except ValueError as exc:
            raise ReplicaFailure(f"the replica sent an unreadable event: {data[:200]}") from exc
        if isinstance(event, dict) and event.get("error"):
            raise ReplicaFailure(f"the replica sent an error: {json.dumps(event['error'])[:300]}")
        if isinstance(event, dict):
            yield event


class RemoteEngine(Engine):
    """The shared part of the remote engines; see the module docstring."""

    dialect = "remote"
    close_after_stream = False  # the server closes a connection after a streamed answer (so it is not pooled)

    def __init__(self, name: str, config: RemoteConfig) -> None:
        super().__init__(name)
        self.config = config
        self.router = Router(config.endpoints, config.policy)
        self._client: httpx.AsyncClient | None = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._info: EngineInfo | None = None
        self._resumed = 0
        self._retried = 0

    # -- what a dialect provides ------------------------------------------------------------------------------------

    @abstractmethod
    async def _probe(self, replica: Replica) -> dict[str, Any]:
        """The replica's capabilities (``context_length``, ``chat_template``, ``images``, ``tools``, ``tokenizer``,
        ``model``); raises when it does not answer."""

    @abstractmethod
    async def _health(self, replica: Replica) -> bool:
        """True when the replica answers its health endpoint."""

    @abstractmethod
    async def _prepare(self, request: GenerationRequest) -> Prompt:
        """The request's prompt as the dialect sends it, with its exact token count."""

    @abstractmethod
    def _stream(self, replica: Replica, request: GenerationRequest, prompt: Prompt, done_tokens: list[int],
                done_text: str, max_tokens: int) -> AsyncGenerator[Piece, None]:
        """One attempt on one replica: continue ``prompt`` after what was already delivered (``done_tokens``, and
        ``done_text``, their text) for at most ``max_tokens`` tokens."""

    # -- plumbing ---------------------------------------------------------------------------------------------------

    @property
    def client(self) -> httpx.AsyncClient:
        """The HTTP client of the running event loop (one per loop: a client's connections belong to the loop that
        opened them)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client_loop = loop
            self.router.start(self._health_probe, self._close_client)  # health checks run on the serving loop
            policy = self.config.policy
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(None, connect=policy.connect_timeout_s),
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=256),
            )
        return self._client

    @staticmethod
    def headers(replica: Replica) -> dict[str, str]:
        key = replica.endpoint.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def call(self, replica: Replica, method: str, path: str, body: dict[str, Any] | None = None,
                   timeout: float | None = None) -> Any:
        """One small JSON call to a replica (probe, tokenize); a transport error or a non-2xx answer raises."""
        request = self.client.build_request(method, replica.url.rstrip("/") + path, json=body,
                                            headers=self.headers(replica),
                                            timeout=timeout or self.config.policy.health_timeout_s * 5)
        response = await self._send(request)
        if response.status_code in (429, 503):
            raise ReplicaBusy(response.status_code, retry_after_seconds(response.headers.get("retry-after")),
                              response.text)
        if response.status_code >= 400:
            raise ReplicaFailure(f"{method} {path}: HTTP {response.status_code}: {response.text[:200]}")
        return response.json()

    async def _send(self, request: httpx.Request, *, stream: bool = False) -> httpx.Response:
        """Send a request; a kept-alive connection the replica had already closed (the request got no answer at
        all) is retried once on a fresh one. Transport errors become :class:`ReplicaFailure` (``dead`` when the
        replica refused the connection)."""
        for fresh in (False, True):
            try:
                return await self.client.send(request, stream=stream)
            except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if fresh:
                    raise ReplicaFailure(f"{type(exc).__name__}: {exc}") from exc
            except httpx.TransportError as exc:
                raise ReplicaFailure(f"{type(exc).__name__}: {exc}",
                                     dead=isinstance(exc, httpx.ConnectError)) from exc
        raise AssertionError("unreachable")

    async def call_any(self, path: str, body: dict[str, Any]) -> Any:
        """A small POST (tokenize, apply a template) to any healthy replica, the next one on failure."""
        tried: list[Replica] = []
        last: Exception | None = None
        while (replica := self.router.pick_any(exclude=tried)) is not None:
            try:
                return await self.call(replica, "POST", path, body)
            except ReplicaFailure as exc:
                self.router.failed(replica, exc.reason, dead=exc.dead)
                last = exc
            except (ReplicaBusy, ValueError) as exc:
                last = exc
            tried.append(replica)
        if last is None:
            raise ReplicaUnavailableError(f"no replica of {self.name} is available: "
                                          + "; ".join(f"{r.url}: {r.state()}" for r in self.router.replicas))
        raise EngineError(f"{self.name}: no replica could answer {path}: {last}")

    @contextlib.asynccontextmanager
    async def open_stream(self, replica: Replica, path: str, body: dict[str, Any]) -> AsyncIterator[httpx.Response]:
        """POST a streaming request to a replica; 429/503 raise :class:`ReplicaBusy`, other errors
        :class:`ReplicaFailure` (4xx other than those: :class:`EngineError`, not retried)."""
        headers = self.headers(replica)
        if self.close_after_stream:
            headers["Connection"] = "close"
        request = self.client.build_request("POST", replica.url.rstrip("/") + path, json=body, headers=headers)
        response = await self._send(request, stream=True)
        try:
            if response.status_code != 200:
                text = (await response.aread()).decode(errors="replace")
                if response.status_code in (429, 503):
                    raise ReplicaBusy(response.status_code,
                                      retry_after_seconds(response.headers.get("retry-after")), text)
                if response.status_code >= 500:
                    raise ReplicaFailure(f"HTTP {response.status_code}: {text[:300]}")
                raise EngineError(f"replica {replica.url} refused the request: HTTP {response.status_code}: "
                                  f"{text[:300]}")
            yield response
        except httpx.TransportError as exc:
            raise ReplicaFailure(f"{type(exc).__name__}: {exc}", dead=True) from exc
        finally:
            await response.aclose()

    # -- the Engine contract ----------------------------------------------------------------------------------------

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise EngineNotReadyError(f"{self.name} has not reached any of its replicas yet")
        return self._info

    def stats(self) -> dict[str, int]:
        base = super().stats()
        base.update(retried=self._retried, resumed=self._resumed, replicas_routable=len(self.router.routable()))
        return base

    def replicas(self) -> list[dict[str, Any]]:
        """Each replica's state, counters and probed capabilities (for /healthz)."""
        return self.router.describe()

    def capabilities(self) -> dict[str, Any]:
        """What the replicas were found to offer (EngineInfo.details, typed)."""
        info = self._info
        if info is None:
            return {}
        return {"dialect": self.dialect, "context_length": info.context_length, "chat_format": info.chat_format,
                "images": info.supports_images, "tools": info.details.get("tools", "unknown"),
                "tokenizer": info.details.get("tokenizer", "unknown"), "model": info.details.get("model_name", "")}

    async def load(self) -> None:
        deadline = time.monotonic() + self.config.load_timeout_s
        found: list[tuple[Replica, dict[str, Any]]] = []
        errors: dict[str, str] = {}
        while True:
            async def probe(replica: Replica) -> None:
                try:
                    caps = await self._probe(replica)
                except (ReplicaFailure, ReplicaBusy, EngineError, httpx.HTTPError, ValueError) as exc:
                    errors[replica.url] = str(exc)
                    replica.healthy = False
                    return
                replica.capabilities = caps
                replica.healthy = True
                found.append((replica, caps))

            await asyncio.gather(*(probe(r) for r in self.router.replicas if not r.capabilities))
            if found or time.monotonic() >= deadline:
                break
            await asyncio.sleep(LOAD_POLL_S)
        if not found:
            raise EngineError(f"none of the {len(self.router.replicas)} replicas answered within "
                              f"{self.config.load_timeout_s:g}s: " + "; ".join(f"{u}: {e}" for u, e in errors.items()))
        self._info = self._info_from([caps for _, caps in found])
        self._ready = True

    async def _health_probe(self, replica: Replica) -> bool:
        ok = await self._health(replica)
        if ok and not replica.capabilities:  # a replica that was down at load: learn what it offers
            with contextlib.suppress(Exception):
                replica.capabilities = await self._probe(replica)
        return ok

    def _info_from(self, probes: Sequence[dict[str, Any]]) -> EngineInfo:
        first = probes[0]
        windows = [int(p["context_length"]) for p in probes if p.get("context_length")]
        window = min(windows) if windows else 4096
        if self.config.context_length:
            window = min(window, self.config.context_length)
        fmt = self.config.chat_format
        if fmt == "auto":
            fmt = chat_format_of(first.get("chat_template"))
        images = self.config.supports_images
        if images is None:
            images = all(bool(p.get("images")) for p in probes)
        return EngineInfo(
            name=self.name, context_length=window, chat_format=fmt, supports_images=images,
            details={
                "engine": self.dialect,
                "replicas": str(len(self.router.replicas)),
                "model_name": str(first.get("model") or ""),
                "tools": str(first.get("tools", "unknown")),
                "tokenizer": str(first.get("tokenizer", "unknown")),
            },
        )

    async def count_tokens(self, request: GenerationRequest) -> int:
        if not self._ready:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        return (await self._prepare(request)).count

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationChunk, None]:
        if not self._ready:
            raise EngineNotReadyError(f"{self.name} is not loaded")
        if request.adapter is not None:
            raise EngineError(f"deployment {self.name} serves remote replicas, which take no per-request adapter")
        prompt = await self._prepare(request)
        if prompt.count == 0:
            raise EmptyPromptError()
        window = self.info.context_length
        if prompt.count >= window:
            raise ContextOverflowError(prompt.count, window)
        budget = min(request.sampling.max_tokens, window - prompt.count)
        prefix = self.config.policy.affinity_prefix_tokens
        key = affinity_key(prompt.tokens, prompt.text or json.dumps(prompt.messages), prefix) if prefix else None
        self._active += 1
        try:
            async with contextlib.aclosing(self._attempts(request, prompt, budget, key)) as chunks:
                async for chunk in chunks:
                    yield chunk
        finally:
            self._active -= 1

    async def _attempts(self, request: GenerationRequest, prompt: Prompt, budget: int,
                        key: bytes | None) -> AsyncGenerator[GenerationChunk, None]:
        """Attempts on replicas until the generation ends; see the module docstring."""
        policy = self.config.policy
        done_tokens: list[int] = []      # ids delivered to the caller (dialects that send ids)
        done_text: list[str] = []
        delivered = 0                    # tokens delivered to the caller
        first = True
        tried: list[Replica] = []
        busy: ReplicaBusy | None = None
        attempt = 0
        while True:
            replica = self.router.pick(key, exclude=tried)
            if replica is None:
                wait = self.router.retry_after()
                if wait is not None or busy is not None:
                    raise ReplicaThrottledError(
                        f"every replica of {self.name} is busy", retry_after_s=wait or DEFAULT_RETRY_AFTER_S,
                        status=busy.status if busy else self.router.throttled_status())
                raise ReplicaUnavailableError(f"no replica of {self.name} is available: "
                                              + "; ".join(f"{r.url}: {r.state()}" for r in self.router.replicas))
            attempt += 1
            if attempt > 1:
                if delivered:
                    self._resumed += 1
                else:
                    self._retried += 1
            held: list[Piece] = []   # pieces whose tokens have no text yet (part of a UTF-8 character)
            attempt_count = 0
            try:
                with self.router.attempt(replica):
                    stream = self._stream(replica, request, prompt, list(done_tokens), "".join(done_text),
                                          budget - delivered)
                    async with contextlib.aclosing(stream):
                        answered = False
                        while True:
                            try:
                                async with asyncio.timeout(policy.stall_timeout_s):
                                    piece = await anext(stream)
                            except StopAsyncIteration:
                                raise ReplicaFailure("the stream ended before its last chunk") from None
                            except TimeoutError:
                                raise ReplicaFailure(f"no chunk for {policy.stall_timeout_s:g}s (stalled)") from None
                            if not answered:
                                answered = True
                                self.router.succeeded(replica)
                            if piece.stop_reason is None and piece.count and not piece.text:
                                held.append(piece)
                                continue
                            count = piece.count + sum(p.count for p in held)
                            tokens = [t for p in (*held, piece) for t in (p.tokens or ())]
                            held.clear()
                            attempt_count += count
                            if piece.stop_reason is not None and piece.usage_completion is not None:
                                count += max(0, piece.usage_completion - attempt_count)
                            if piece.stop_reason is None and not count and not piece.text:
                                continue
                            if delivered + count >= budget and piece.stop_reason is None:
                                piece.stop_reason = "length"
                            chunk = GenerationChunk(text=piece.text, token_count=count,
                                                    prompt_tokens=prompt.count if first else None,
                                                    stop_reason=piece.stop_reason, cached_tokens=piece.cached_tokens)
                            first = False
                            delivered += count
                            done_tokens.extend(tokens)
                            done_text.append(piece.text)
                            self._generated_tokens += count
                            yield chunk
                            if chunk.stop_reason is not None:
                                return
            except ReplicaBusy as exc:
                busy = exc
                self.router.throttled(replica, exc.retry_after_s, exc.status)
                log.info("replica %s of %s is busy (HTTP %d, Retry-After %.1fs)", replica.url, self.name,
                         exc.status, exc.retry_after_s)
            except ReplicaFailure as exc:
                self.router.failed(replica, exc.reason, dead=exc.dead)
                log.warning("replica %s of %s failed after %d tokens (attempt %d): %s", replica.url, self.name,
                            delivered, attempt, exc.reason)
                if attempt >= policy.max_attempts:
                    raise EngineError(f"{self.name}: gave up after {attempt} attempts; last: {exc.reason}") from exc
                await asyncio.sleep(policy.retry_backoff_s)
            tried.append(replica)
            if attempt >= policy.max_attempts and busy is not None:
                raise ReplicaThrottledError(f"every replica of {self.name} is busy",
                                            retry_after_s=self.router.retry_after() or busy.retry_after_s,
                                            status=busy.status)

    async def _close_client(self) -> None:
        """Close the client of the running loop (its health watcher is stopping)."""
        if self._client is not None and self._client_loop is asyncio.get_running_loop():
            client, self._client = self._client, None
            await client.aclose()

    async def close(self) -> None:
        self._ready = False
        await self.router.close()
        await self._close_client()


def sampling_body(request: GenerationRequest) -> dict[str, Any]:
    """The sampling fields both dialects share."""
    sampling = request.sampling
    body: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p}
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    return body
