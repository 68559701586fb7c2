"""Which replica of a remote deployment serves a request: health, prefix affinity, circuit breaking.

The remote engines (``engines/remote.py``) ask :meth:`Router.pick` for a replica before each attempt and report
how it went. The router keeps, per replica:

* **health**: an active check (``probe``, every ``health_interval_s``) marks a replica up or down; a failed request
  (refused or reset connection, a 5xx, a stall) ejects it at once (passive ejection) until a later check, or the end
  of its ejection, readmits it.
* **a circuit breaker**: ``breaker_failures`` failures in a row open it for ``breaker_open_s`` (doubling, up to
  ``breaker_max_open_s``, while failures go on); when the time is up one trial request (half-open) or one good
  health check closes it.
* **Retry-After**: a replica that answered 429 or 503 gets no request until the time it asked for has passed.

Among the routable replicas a request goes by **prefix affinity**: its key (the prompt's leading tokens) is hashed
onto a ring of virtual nodes (``weight`` × :data:`VNODES` per replica). A new key is assigned to the first replica
clockwise holding fewer than ``ceil(load_factor × keys / replicas)`` keys (consistent hashing with bounded loads,
Mirrokni, Thorup and Zadimoghaddam 2016), so prefixes spread evenly over the replicas' caches; later requests with
the key go to that replica (whose prefix cache holds it) while it has fewer than
``max(slots, ceil(load_factor × (in-flight + 1) / replicas))`` requests in flight, and spill clockwise past that, so
one hot prefix cannot pin one replica (weights scale both shares).

Nothing here does I/O except the health checks, through the ``probe`` the engine hands in.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

VNODES = 64  # virtual nodes per unit of weight on the hash ring
DEFAULT_SLOTS = 8  # a replica's concurrent requests when neither configured nor probed
MAX_KEYS = 65536  # affinity keys remembered (least recently used forgotten first)


@dataclass(frozen=True)
class RouterPolicy:
    """How a remote deployment picks and gives up on replicas (DeploymentSettings' router fields)."""

    affinity_prefix_tokens: int = 64
    load_factor: float = 1.25
    max_attempts: int = 4
    health_interval_s: float = 2.0
    health_timeout_s: float = 2.0
    stall_timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    breaker_failures: int = 3
    breaker_open_s: float = 5.0
    breaker_max_open_s: float = 60.0
    eject_s: float = 5.0
    retry_backoff_s: float = 0.05
    replica_slots: int | None = None   # requests a replica runs at once; None: as probed (llama-server), else 8


@dataclass(frozen=True)
class Endpoint:
    """One replica's address, optional API key (sent as a bearer token) and routing weight."""

    url: str
    api_key: str | None = None
    weight: float = 1.0


@dataclass
class Replica:
    """One replica and what the router knows of it."""

    endpoint: Endpoint
    healthy: bool = True                 # the last active check (or the last request) found it answering
    ejected_until: float = 0.0           # passive ejection / open breaker: no request before this (monotonic)
    throttled_until: float = 0.0         # Retry-After from a 429/503
    throttle_status: int = 429           # which of the two it answered
    consecutive_failures: int = 0
    open_for_s: float = 0.0              # the breaker's current open period (0: closed)
    trial: bool = False                  # half-open: one trial request in flight
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    capabilities: dict[str, Any] = field(default_factory=dict)
    last_error: str | None = None

    def slots(self, configured: int | None) -> int:
        """Requests it runs at once: as configured, else as probed (llama-server's slots), else 8."""
        return configured or int(self.capabilities.get("slots") or DEFAULT_SLOTS)

    @property
    def url(self) -> str:
        return self.endpoint.url

    def state(self, now: float | None = None) -> str:
        now = time.monotonic() if now is None else now
        if not self.healthy:
            return "down"
        if self.ejected_until > now:
            return "ejected"
        if self.open_for_s:
            return "half-open"
        if self.throttled_until > now:
            return "throttled"
        return "up"

    def describe(self) -> dict[str, Any]:
        now = time.monotonic()
        out: dict[str, Any] = {"url": self.url, "state": self.state(now), "weight": self.endpoint.weight,
                               "in_flight": self.in_flight, "requests": self.requests, "failures": self.failures}
        if self.ejected_until > now:
            out["ejected_for_s"] = round(self.ejected_until - now, 2)
        if self.throttled_until > now:
            out["retry_after_s"] = round(self.throttled_until - now, 2)
        if self.last_error:
            out["last_error"] = self.last_error
        if self.capabilities:
            out["capabilities"] = self.capabilities
        return out


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def affinity_key(tokens: Sequence[int] | None, text: str, prefix_tokens: int) -> bytes:
    """The routing key of a prompt: its first ``prefix_tokens`` tokens (or, without tokens, about four characters a
    token of its text)."""
    if tokens is not None:
        return b",".join(str(t).encode() for t in tokens[:prefix_tokens])
    return text[: prefix_tokens * 4].encode("utf-8", errors="replace")


class Router:
    """Picks replicas for one remote deployment; see the module docstring."""

    def __init__(self, endpoints: Sequence[Endpoint], policy: RouterPolicy | None = None) -> None:
        if not endpoints:
            raise ValueError("a router needs at least one endpoint")
        self.policy = policy or RouterPolicy()
        self.replicas = [Replica(e) for e in endpoints]
        ring: list[tuple[int, int]] = []
        for index, replica in enumerate(self.replicas):
            for v in range(max(1, round(VNODES * replica.endpoint.weight))):
                ring.append((_hash(f"{replica.url}#{v}".encode()), index))
        ring.sort()
        self._ring = ring
        self._ring_keys = [h for h, _ in ring]
        self._task: asyncio.Task[None] | None = None
        self._rr = 0
        self._keys: OrderedDict[bytes, int] = OrderedDict()  # affinity key -> index of the replica it is assigned
        self._owned = [0] * len(self.replicas)  # keys assigned to each replica

    # -- choosing ---------------------------------------------------------------------------------------------------

    def routable(self, now: float | None = None) -> list[Replica]:
        """Replicas a request may go to now: healthy, not ejected or throttled, breaker closed or ready for a trial."""
        now = time.monotonic() if now is None else now
        return [r for r in self.replicas
                if r.healthy and r.ejected_until <= now and r.throttled_until <= now
                and not (r.open_for_s and r.trial)]

    def pick(self, key: bytes | None, exclude: Sequence[Replica] = ()) -> Replica | None:
        """The replica for a request with this affinity key (None: round-robin), skipping ``exclude`` while others
        are routable. None when no replica is routable.

        A key seen before goes to the replica it was assigned, while that replica is routable and under its in-flight
        bound. A new key (or one whose replica is gone) is assigned to the first replica clockwise from its hash that
        holds fewer than ``ceil(load_factor × (keys + 1) / replicas)`` keys (weighted) and is under its in-flight
        bound: consistent hashing with bounded loads, so that the prefixes spread evenly over the replicas' caches. A
        request that finds its replica over its in-flight bound spills to the next one clockwise (without moving the
        key), so that one hot prefix cannot pin one replica.
        """
        now = time.monotonic()
        candidates = self.routable(now)
        preferred = [r for r in candidates if r not in exclude] or candidates
        if not preferred:
            return None
        if key is None:
            self._rr += 1
            return preferred[self._rr % len(preferred)]
        allowed = {id(r) for r in preferred}
        total_weight = sum(r.endpoint.weight for r in preferred)
        in_flight = sum(r.in_flight for r in self.replicas)
        factor = self.policy.load_factor

        def room(replica: Replica) -> bool:  # under the in-flight bound
            share = math.ceil(factor * (in_flight + 1) * replica.endpoint.weight / total_weight)
            return replica.in_flight < max(replica.slots(self.policy.replica_slots), share)

        assigned = self._keys.get(key)
        if assigned is not None:
            home = self.replicas[assigned]
            self._keys.move_to_end(key)
            if id(home) in allowed and room(home):
                return home
        start = bisect.bisect_left(self._ring_keys, _hash(key)) % len(self._ring)
        order: list[Replica] = []
        for step in range(len(self._ring)):
            replica = self.replicas[self._ring[(start + step) % len(self._ring)][1]]
            if id(replica) in allowed and replica not in order:
                order.append(replica)
                if len(order) == len(allowed):
                    break
        keys = len(self._keys) + (assigned is None)
        chosen = next((r for r in order if room(r) and self._owned[self.replicas.index(r)]
                       < math.ceil(factor * keys * r.endpoint.weight / total_weight)), None)
        chosen = chosen or next((r for r in order if room(r)), None) or order[0]
        if assigned is None or not any(r is self.replicas[assigned] for r in candidates):
            self._assign(key, self.replicas.index(chosen))
        return chosen

    def _assign(self, key: bytes, index: int) -> None:
        """Remember ``key``'s replica (the least recently used keys are forgotten past MAX_KEYS)."""
        previous = self._keys.pop(key, None)
        if previous is not None:
            self._owned[previous] -= 1
        self._keys[key] = index
        self._owned[index] += 1
        while len(self._keys) > MAX_KEYS:
            _, evicted = self._keys.popitem(last=False)
            self._owned[evicted] -= 1

    def pick_any(self, exclude: Sequence[Replica] = ()) -> Replica | None:
        """A replica for a small call that generates nothing (tokenize, apply a template): any healthy one not
        ejected, throttled or not, round-robin, skipping ``exclude``."""
        now = time.monotonic()
        candidates = [r for r in self.replicas if r.healthy and r.ejected_until <= now and r not in exclude]
        if not candidates:
            return None
        self._rr += 1
        return candidates[self._rr % len(candidates)]

    def retry_after(self) -> float | None:
        """Seconds until a throttled replica takes requests again, when every healthy replica is throttled."""
        now = time.monotonic()
        healthy = [r for r in self.replicas if r.healthy and r.ejected_until <= now]
        if healthy and all(r.throttled_until > now for r in healthy):
            return min(r.throttled_until for r in healthy) - now
        return None

    # -- accounting -------------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def attempt(self, replica: Replica) -> Any:
        """Count a request in flight on ``replica`` for the ``with`` block (half-open: it is the trial)."""
        replica.in_flight += 1
        replica.requests += 1
        if replica.open_for_s:
            replica.trial = True
        try:
            yield replica
        finally:
            replica.in_flight -= 1
            replica.trial = False

    def succeeded(self, replica: Replica) -> None:
        """The replica answered (a whole stream, or its first chunk): reset its failures and close its breaker."""
        replica.consecutive_failures = 0
        replica.open_for_s = 0.0
        replica.healthy = True
        replica.last_error = None

    def failed(self, replica: Replica, reason: str, *, dead: bool = False) -> None:
        """A request failed on the replica. ``dead`` (refused or reset connection) ejects it at once; other failures
        open its breaker after ``breaker_failures`` in a row."""
        policy = self.policy
        replica.failures += 1
        replica.consecutive_failures += 1
        replica.last_error = reason
        now = time.monotonic()
        if dead or replica.open_for_s or replica.consecutive_failures >= policy.breaker_failures:
            replica.open_for_s = min(policy.breaker_max_open_s,
                                     replica.open_for_s * 2 if replica.open_for_s else
                                     (policy.eject_s if dead else policy.breaker_open_s))
            replica.ejected_until = now + replica.open_for_s
            log.warning("replica %s ejected for %.1fs: %s", replica.url, replica.open_for_s, reason)

    def throttled(self, replica: Replica, retry_after_s: float, status: int = 429) -> None:
        """The replica answered 429/503 with (or without) Retry-After: leave it alone that long."""
        replica.throttled_until = time.monotonic() + max(0.0, retry_after_s)
        replica.throttle_status = status

    def throttled_status(self) -> int:
        """429 when any replica still inside its Retry-After answered 429 (at capacity), else 503 (unavailable)."""
        now = time.monotonic()
        statuses = {r.throttle_status for r in self.replicas if r.throttled_until > now}
        return 429 if 429 in statuses or not statuses else 503

    # -- active health checks ---------------------------------------------------------------------------------------

    def start(self, probe: Callable[[Replica], Awaitable[bool]],
              on_stop: Callable[[], Awaitable[None]] | None = None) -> None:
        """Check every replica every ``health_interval_s`` with ``probe`` (True: it answers), on the running loop (a
        watcher left on a loop that has closed is replaced)."""
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.get_loop() is not loop:
            self._task = loop.create_task(self._watch(probe, on_stop))

    async def check(self, probe: Callable[[Replica], Awaitable[bool]]) -> None:
        """One round of health checks, all replicas at once."""

        async def one(replica: Replica) -> None:
            try:
                async with asyncio.timeout(self.policy.health_timeout_s):
                    ok = await probe(replica)
            except Exception as exc:  # a probe failure of any kind is a failed check
                ok = False
                replica.last_error = f"health check: {type(exc).__name__}: {exc}".rstrip(": ")
            now = time.monotonic()
            if ok:
                if not replica.healthy:
                    log.info("replica %s is answering health checks again", replica.url)
                replica.healthy = True
                if replica.open_for_s and replica.ejected_until <= now:
                    replica.open_for_s = 0.0  # readmitted: the breaker closes on a good check after its open time
                    replica.consecutive_failures = 0
                    log.info("replica %s readmitted", replica.url)
            else:
                if replica.healthy:
                    log.warning("replica %s failed its health check", replica.url)
                replica.healthy = False

        await asyncio.gather(*(one(r) for r in self.replicas))

    async def _watch(self, probe: Callable[[Replica], Awaitable[bool]],
                     on_stop: Callable[[], Awaitable[None]] | None) -> None:
        try:
            while True:
                await asyncio.sleep(self.policy.health_interval_s)
                try:
                    await self.check(probe)
                except Exception:  # never let the watcher die
                    log.exception("health checks failed")
        finally:  # cancelled: by close(), or by its event loop shutting down (asyncio.run cancels what is left)
            if on_stop is not None:
                await on_stop()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def describe(self) -> list[dict[str, Any]]:
        return [r.describe() for r in self.replicas]
