"""The tag store: the tags of every taggable resource (TagResource, UntagResource, ListTagsForResource), by ARN.

One table for every resource type (provisioned models, application inference profiles, and whatever else later
carries tags): a row per ARN and key. Whether the ARN names a live resource is the caller's to check
(``services/tagging.py``); deleting a resource drops its tags here.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import String, delete, select
from sqlalchemy.orm import Mapped, mapped_column

from llamarock.storage.db import Base, Store

Tags = tuple[tuple[str, str], ...]


class TagRow(Base):
    __tablename__ = "resource_tags"

    arn: Mapped[str] = mapped_column(String(1011), primary_key=True)
    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class TagStore(Store):
    """Tags by resource ARN; keys are unique per resource, in the order they were first set."""

    def tags(self, arn: str) -> Tags:
        with self.db.session() as session:
            rows = session.execute(select(TagRow).where(TagRow.arn == arn).order_by(TagRow.key)).scalars()
            return tuple((row.key, row.value) for row in rows)

    def many(self, arns: Iterable[str]) -> dict[str, Tags]:
        """The tags of several resources (those without tags are left out)."""
        wanted = sorted(set(arns))
        found: dict[str, list[tuple[str, str]]] = {}
        if not wanted:
            return {}
        with self.db.session() as session:
            for start in range(0, len(wanted), 500):
                rows = session.execute(select(TagRow).where(TagRow.arn.in_(wanted[start:start + 500]))
                                       .order_by(TagRow.arn, TagRow.key)).scalars()
                for row in rows:
                    found.setdefault(row.arn, []).append((row.key, row.value))
        return {arn: tuple(tags) for arn, tags in found.items()}

    def put(self, arn: str, tags: Iterable[tuple[str, str]], limit: int | None = None) -> Tags | None:
        """Add or overwrite tags, in one transaction; the resource's tags after, or None (nothing written) when
        they would be more than ``limit``."""
        with self.db.session(write=True) as session:
            current = {row.key: row for row in session.execute(select(TagRow).where(TagRow.arn == arn)).scalars()}
            new = dict(tags)
            if limit is not None and len(set(current) | set(new)) > limit:
                return None
            for key, value in new.items():
                if key in current:
                    current[key].value = value
                else:
                    session.add(TagRow(arn=arn, key=key, value=value))
            merged = {key: row.value for key, row in current.items()} | new
        return tuple(sorted(merged.items()))

    def remove(self, arn: str, keys: Iterable[str]) -> None:
        """Remove the tags with these keys (keys the resource lacks are ignored)."""
        keys = list(set(keys))
        if not keys:
            return
        with self.db.session(write=True) as session:
            session.execute(delete(TagRow).where(TagRow.arn == arn, TagRow.key.in_(keys)))

    def drop(self, arn: str) -> None:
        """Forget every tag of a deleted resource."""
        with self.db.session(write=True) as session:
            session.execute(delete(TagRow).where(TagRow.arn == arn))
