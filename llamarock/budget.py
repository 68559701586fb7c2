"""Token budgets shared by the two layers that meter calls: principals' quotas (``auth/quotas.py``) and provisioned
models' tokens per minute (``scheduler.py``). One token bucket, one estimate of what a request may use."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

CHARS_PER_TOKEN = 4


def estimate_tokens(prompt_chars: int, max_tokens: int) -> int:
    """What a request may use before it runs: its prompt (about 4 characters a token) plus the most it may generate.

    Reserved up front and settled with the real count once the answer is complete.
    """
    return math.ceil(max(0, prompt_chars) / CHARS_PER_TOKEN) + max(0, max_tokens)


class TokenBucket:
    """So many per minute: a bucket holding one minute's allowance, refilled continuously.

    A request takes its estimate up front and settles with the real count afterwards (the bucket may go into debt).
    An amount larger than a whole minute's allowance is admitted when the bucket is full, so it is never stuck.
    """

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.tokens = float(per_minute)
        self._clock = clock
        self._updated = clock()
        self.last_used = self._updated

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(float(self.per_minute), self.tokens + (now - self._updated) * self.per_minute / 60.0)
        self._updated = now

    def take(self, amount: float) -> bool:
        self._refill()
        self.last_used = self._updated
        if self.tokens < min(amount, self.per_minute):
            return False
        self.tokens -= amount
        return True

    def give_back(self, amount: float) -> None:
        self._refill()
        self.tokens = min(float(self.per_minute), self.tokens + amount)

    def used(self) -> int:
        """Taken and not yet refilled: about what the last minute used (more when the bucket is in debt)."""
        self._refill()
        return max(0, math.ceil(self.per_minute - self.tokens))

    def resize(self, per_minute: int) -> None:
        self._refill()
        self.tokens += per_minute - self.per_minute
        self.per_minute = per_minute
