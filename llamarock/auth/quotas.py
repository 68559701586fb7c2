"""Requests- and tokens-per-minute quotas: one token bucket per principal, model and limit.

A bucket holds at most a minute's allowance and refills continuously. A request takes one request token and
reserves ``prompt tokens (estimated) + max tokens``; when the response says how many tokens it really used, the
reservation is settled and the difference returned (or charged: a bucket may go into debt, delaying later calls).
A reservation larger than a whole minute's allowance is admitted when the bucket is full, so it is never stuck.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llamarock.budget import TokenBucket, estimate_tokens
from llamarock.errors import ThrottlingException
from llamarock.storage.quotas import BucketKey, QuotaBucketStore
from llamarock.types import DEFAULT_MAX_TOKENS as DEFAULT_MAX_GEN_LEN

TOO_MANY_REQUESTS = "Too many requests, please wait before trying again."
TOO_MANY_TOKENS = "Too many tokens, please wait before trying again."
# Past this many buckets, full (idle) ones are forgotten before a new one is made.
PRUNE_AT = 4096


@dataclass(frozen=True)
class QuotaUse:
    """One principal's limits and use for one model; a limit of None means unlimited."""

    principal: str
    model: str
    rpm: int | None
    rpm_used: int
    tpm: int | None
    tpm_used: int


class SharedBucket:
    """A bucket kept in the metadata database (``shared_quotas``): the same take and give-back as
    :class:`TokenBucket`, shared exactly by every server on that database."""

    def __init__(self, store: QuotaBucketStore, key: BucketKey, clock: Callable[[], float]) -> None:
        self.store, self.key, self._clock = store, key, clock

    def take(self, amount: float) -> bool:
        return self.store.take(self.key, amount, self._clock())

    def give_back(self, amount: float) -> None:
        self.store.give_back(self.key, amount, self._clock())


@dataclass
class Reservation:
    """Tokens held for one request; ``settle`` with the real count once it is known (only the first call counts)."""

    bucket: TokenBucket | SharedBucket | None
    reserved: int
    settled: bool = field(default=False)

    def settle(self, used_tokens: int) -> None:
        if self.settled:
            return
        self.settled = True
        if self.bucket is not None:
            self.bucket.give_back(self.reserved - max(0, used_tokens))


class Quotas:
    """All buckets of one server process, or, given a ``store``, of every server on its metadata database."""

    def __init__(self, clock: Callable[[], float] | None = None, store: QuotaBucketStore | None = None) -> None:
        self._clock = clock or (time.time if store is not None else time.monotonic)
        self._buckets: dict[tuple[str, str, str, int], TokenBucket] = {}
        self.store = store

    @property
    def shared(self) -> bool:
        return self.store is not None

    def _bucket(self, principal: str, model: str, kind: str, limit: int) -> TokenBucket | SharedBucket:
        if self.store is not None:
            return SharedBucket(self.store, BucketKey(principal, model, kind, limit), self._clock)
        key = (principal, model, kind, limit)
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= PRUNE_AT:
                self._prune()
            bucket = self._buckets[key] = TokenBucket(limit, self._clock)
        return bucket

    def _prune(self) -> None:
        """Forget buckets that have refilled completely: a full bucket is what a new one would be."""
        for key in [key for key, bucket in self._buckets.items() if bucket.used() == 0]:
            del self._buckets[key]

    def usage(self) -> list[QuotaUse]:
        """Limits and use per principal and model, for every pair that has been limited since the server started.

        A principal whose limit changed has one bucket per limit: the one used last is its current one. Shared
        quotas: every pair limited on any server of the database.
        """
        buckets: list[tuple[tuple[str, str, str], int, float, int]] = []  # (pair and kind, limit, last used, used)
        if self.store is not None:
            for state in self.store.states(self._clock()):
                bucket_key = state.key
                buckets.append(((bucket_key.principal, bucket_key.model, bucket_key.kind), bucket_key.per_minute,
                                state.last_used, state.used))
        else:
            for (principal, model, kind, limit), bucket in self._buckets.items():
                buckets.append(((principal, model, kind), limit, bucket.last_used, bucket.used()))
        latest: dict[tuple[str, str, str], tuple[int, float, int]] = {}
        for key, limit, last_used, used in buckets:
            if key not in latest or last_used >= latest[key][1]:
                latest[key] = (limit, last_used, used)
        pairs = sorted({(principal, model) for principal, model, _ in latest})
        rows = []
        for principal, model in pairs:
            rpm = latest.get((principal, model, "rpm"))
            tpm = latest.get((principal, model, "tpm"))
            rows.append(QuotaUse(
                principal, model, rpm[0] if rpm else None, rpm[2] if rpm else 0,
                tpm[0] if tpm else None, tpm[2] if tpm else 0,
            ))
        return rows

    def admit(self, principal: str, model: str, rpm: int | None, tpm: int | None, tokens: int) -> Reservation:
        """Take a request and reserve ``tokens``, or raise ThrottlingException (taking nothing)."""
        requests = self._bucket(principal, model, "rpm", rpm) if rpm else None
        if requests is not None and not requests.take(1):
            raise ThrottlingException(TOO_MANY_REQUESTS)
        if not tpm or tokens <= 0:
            return Reservation(None, 0)
        bucket = self._bucket(principal, model, "tpm", tpm)
        if not bucket.take(tokens):
            if requests is not None:
                requests.give_back(1)
            raise ThrottlingException(TOO_MANY_TOKENS)
        return Reservation(bucket, tokens)


def _int(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 10**7 else default


def request_estimate(body: bytes) -> int:
    """What an invocation body may use (:func:`llamarock.budget.estimate_tokens`): a native Llama body's prompt and
    ``max_gen_len``, or a Converse body's system prompt, messages and ``inferenceConfig.maxTokens``."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        document = None
    if not isinstance(document, dict):
        return estimate_tokens(len(body), DEFAULT_MAX_GEN_LEN)
    if "prompt" in document:
        prompt = document.get("prompt")
        text = prompt if isinstance(prompt, str) else ""
        return estimate_tokens(len(text), _int(document.get("max_gen_len"), DEFAULT_MAX_GEN_LEN))
    config = document.get("inferenceConfig")
    max_tokens = _int(config.get("maxTokens"), DEFAULT_MAX_GEN_LEN) if isinstance(config, dict) else DEFAULT_MAX_GEN_LEN
    try:
        text = json.dumps([document.get("system"), document.get("messages")], ensure_ascii=False)
    except (ValueError, RecursionError):
        text = ""
    return estimate_tokens(len(text), max_tokens)
