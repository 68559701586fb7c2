"""Tagging: TagResource, UntagResource and ListTagsForResource for every taggable resource, by ARN.

Tags live in one store (``storage/tags.py``) keyed by ARN. Each resource type registers a :class:`TaggableKind`
under its ARN's resource type (``provisioned-model``, ``application-inference-profile``...): it says whether an ARN
names a live resource of the request's region, and hears of tag changes (so that invocations can attribute usage
to a profile's tags without reading the database). Create operations validate their ``tags`` member with
:func:`check_tags` and write them with :meth:`TaggingService.put`.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from llamarock.errors import ResourceNotFoundException, TooManyTagsException, ValidationException
from llamarock.storage.tags import Tags, TagStore

# At most 50 tags per resource (AWS's limit for Bedrock resources); keys and values as botocore's TagKey/TagValue.
MAX_TAGS = 50
TAG_PATTERN = r"[a-zA-Z0-9\s._:/=+@-]*"
_TAG = re.compile(TAG_PATTERN)
_ARN = re.compile(r"^arn:aws:bedrock:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):(?P<type>[a-z-]+)/(?P<id>.+)$")


@dataclass(frozen=True)
class TaggableKind:
    """One taggable resource type: ``exists(region, arn)`` says whether the ARN names a live resource of the
    region; ``changed(arn, tags)`` hears of its new tags (None: nobody listens)."""

    exists: Callable[[str, str], bool]
    changed: Callable[[str, Tags], None] | None = None


def _escaped(text: str) -> str:
    return text.encode("unicode_escape").decode("ascii")


def check_tags(tags: Iterable[tuple[str, str]], member: str = "tags") -> list[tuple[str, str]]:
    """Tags as botocore's ``Tag`` shape constrains them (the codec checked lengths): pattern, no reserved
    ``aws:`` prefix, each key once."""
    checked = list(tags)
    seen: set[str] = set()
    for index, (key, value) in enumerate(checked, start=1):
        for part, text in (("key", key), ("value", value)):
            if _TAG.fullmatch(text) is None:
                raise ValidationException(
                    f"1 validation error detected: Value '{_escaped(text)}' at '{member}.{index}.member.{part}' "
                    f"failed to satisfy constraint: Member must satisfy regular expression pattern: {TAG_PATTERN}"
                )
        if key.lower().startswith("aws:"):
            raise ValidationException(
                f"The tag key {key} starts with aws:, which is reserved for AWS's own tags. Choose another key."
            )
        if key in seen:
            raise ValidationException(f"The tag key {key} appears more than once in {member}. Give each key once.")
        seen.add(key)
    return checked


class TaggingService:
    """The tags of this server's resources."""

    def __init__(self, store: TagStore, account: str) -> None:
        self.store = store
        self.account = account
        self._kinds: dict[str, TaggableKind] = {}

    def register(self, resource_type: str, kind: TaggableKind) -> None:
        self._kinds[resource_type] = kind

    def _resource(self, region: str, arn: str) -> tuple[str, TaggableKind]:
        """The resource type of a live resource's ARN, or Bedrock's ResourceNotFoundException."""
        match = _ARN.match(arn)
        kind = self._kinds.get(match["type"]) if match is not None else None
        if match is None or kind is None or match["account"] != self.account or match["region"] != region:
            where = "" if match is None or match["region"] == region else (
                f" It names {match['region']}, but the request was signed for {region}."
            )
            raise ResourceNotFoundException(
                f"The resource {arn} was not found.{where} Give the ARN of a {' or '.join(self._words())} of this "
                f"account ({self.account}) and region."
            )
        if not kind.exists(region, arn):
            raise ResourceNotFoundException(
                f"The resource {arn} was not found. It may have been deleted; list the resources of its type to find "
                "its ARN."
            )
        return match["type"], kind

    def _words(self) -> list[str]:
        return [name.replace("-", " ") for name in sorted(self._kinds)]

    async def tags(self, region: str, arn: str) -> Tags:
        """ListTagsForResource."""
        self._resource(region, arn)
        return await asyncio.to_thread(self.store.tags, arn)

    async def tag(self, region: str, arn: str, tags: list[tuple[str, str]]) -> None:
        """TagResource: add or overwrite tags; TooManyTagsException past MAX_TAGS (nothing written)."""
        _, kind = self._resource(region, arn)
        await self.put(arn, check_tags(tags), kind)

    async def put(self, arn: str, tags: list[tuple[str, str]], kind: TaggableKind | None = None) -> None:
        """Write validated tags (create operations call this with their ``tags``)."""
        if not tags:
            return
        after = await asyncio.to_thread(self.store.put, arn, tags, MAX_TAGS)
        if after is None:
            raise TooManyTagsException(
                f"The resource {arn} would have more than {MAX_TAGS} tags. Remove some (UntagResource) first.",
                resourceName=arn,
            )
        self._notify(arn, after, kind)

    async def untag(self, region: str, arn: str, keys: list[str]) -> None:
        """UntagResource: keys the resource lacks are ignored, as on AWS."""
        _, kind = self._resource(region, arn)
        await asyncio.to_thread(self.store.remove, arn, keys)
        self._notify(arn, await asyncio.to_thread(self.store.tags, arn), kind)

    async def seed(self, arn: str, tags: list[tuple[str, str]]) -> None:
        """Write a resource's tags once, when the store has none for it yet (tags kept elsewhere before)."""
        if not await asyncio.to_thread(self.store.tags, arn):
            await asyncio.to_thread(self.store.put, arn, tags, None)

    async def drop(self, arn: str) -> None:
        """Forget a deleted resource's tags."""
        await asyncio.to_thread(self.store.drop, arn)

    def _notify(self, arn: str, tags: Tags, kind: TaggableKind | None) -> None:
        if kind is None:
            match = _ARN.match(arn)
            kind = self._kinds.get(match["type"]) if match is not None else None
        if kind is not None and kind.changed is not None:
            kind.changed(arn, tags)
