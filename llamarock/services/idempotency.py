"""Create operations that take a ``clientRequestToken``: one rule for every resource that has one.

A create with a token that was used before returns what the first create made, or, when the request differs (its
digest), the resource's error for a reused token; a create whose name is taken in its region is refused. The check
and the write happen under the store's lock, so that two concurrent creates cannot both pass the check.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from llamarock.errors import BedrockError


class Created(Protocol):
    """What a created resource carries for this rule."""

    @property
    def region(self) -> str: ...

    @property
    def name(self) -> str: ...

    @property
    def client_token(self) -> str | None: ...

    @property
    def request_digest(self) -> str: ...


T = TypeVar("T", bound=Created)


class CreateStore(Protocol[T]):
    """A store of resources created with a token: ``find_token``, ``name_taken`` and ``insert`` under ``lock``."""

    lock: threading.Lock

    def find_token(self, region: str, token: str) -> T | None: ...

    def name_taken(self, region: str, name: str) -> bool: ...

    def insert(self, item: T) -> None: ...


def request_digest(*parts: object) -> str:
    """What a create asked for, as a digest: a repeat of its token must ask for the same."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def insert_once(store: CreateStore[T], item: T, name_taken: Callable[[], BedrockError]) -> T:
    """Write ``item``, or return the resource an earlier create with its token made (which may differ: check it
    with :func:`same_request`); ``name_taken()`` is raised when its name is in use in its region."""
    with store.lock:
        if item.client_token is not None:
            existing = store.find_token(item.region, item.client_token)
            if existing is not None:
                return existing
        if store.name_taken(item.region, item.name):
            raise name_taken()
        store.insert(item)
        return item


def same_request(existing: T, digest: str, reused: Callable[[], BedrockError]) -> T:
    """The resource an earlier create with the same token made, if that create asked for the same thing."""
    if existing.request_digest != digest:
        raise reused()
    return existing
