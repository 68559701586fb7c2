"""Application inference profiles: CreateInferenceProfile, Get/List/DeleteInferenceProfile, and invocation by ARN.

A profile copies its model from a foundation model (``arn:aws:bedrock:<region>::foundation-model/<id>``: it runs
in that region) or from a system-defined cross-region inference profile (its ARN: it routes as that profile does).
Clients invoke it by its ARN (``arn:aws:bedrock:<region>:<account>:application-inference-profile/<id>``) on every
runtime operation; usage records, metrics and invocation logs name that ARN, and usage records carry the profile's
tags, which is what cost allocation by profile and tag reads (docs/observability.md).

The database is the record; this process keeps every profile and its tags in memory too, so that invocations never
wait for the database (as provisioned models do).
"""

from __future__ import annotations

import asyncio
import secrets
import string
from collections.abc import Callable
from datetime import UTC, datetime

from llamarock.bedrock import catalog
from llamarock.bedrock.model_ids import (
    INVALID_MODEL_IDENTIFIER,
    RESOURCE_ID,
    ModelRef,
    application_profile_arn,
    foundation_model_arn,
    parse_model_ref,
)
from llamarock.bedrock.regions import RegionMap
from llamarock.errors import (
    ConflictException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    TooManyTagsException,
    ValidationException,
)
from llamarock.services.idempotency import insert_once, request_digest, same_request
from llamarock.services.tagging import MAX_TAGS, TaggableKind, TaggingService, check_tags
from llamarock.storage.profiles import ApplicationProfile, ProfileStore
from llamarock.storage.tags import Tags

__all__ = ["ApplicationProfile", "ProfileService"]

RESOURCE_TYPE = "application-inference-profile"
# AWS's default quota of application inference profiles per account and region.
MAX_PROFILES = 1000
_ID_ALPHABET = string.ascii_lowercase + string.digits


class ProfileService:
    """The application inference profiles of this server."""

    def __init__(
        self,
        store: ProfileStore,
        tagging: TaggingService,
        regions: RegionMap,
        account: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.tagging = tagging
        self.regions = regions
        self.account = account
        self._clock = clock
        self._by_arn: dict[str, ApplicationProfile] = {}
        self._tags: dict[str, Tags] = {}
        tagging.register(RESOURCE_TYPE, TaggableKind(self._exists, self._tags_changed))

    async def load(self) -> None:
        """Read every profile and its tags (at start-up)."""
        profiles = await asyncio.to_thread(self.store.all)
        tags = await asyncio.to_thread(self.tagging.store.many, [p.arn for p in profiles])
        self._by_arn = {p.arn: p for p in profiles}
        self._tags = {arn: tags.get(arn, ()) for arn in self._by_arn}

    def _exists(self, region: str, arn: str) -> bool:
        profile = self._by_arn.get(arn)
        return profile is not None and profile.region == region

    def _tags_changed(self, arn: str, tags: Tags) -> None:
        if arn in self._by_arn:
            self._tags[arn] = tags

    # ------------------------------------------------------------------------------------------- operations

    def _source(self, copy_from: str, region: str) -> tuple[str, tuple[str, ...]]:
        """The catalog model and destination foundation-model ARNs of ``modelSource.copyFrom`` in ``region``."""
        try:
            ref = parse_model_ref(copy_from)
        except ValidationException:
            ref = None
        if ref is None or ref.kind not in ("foundation-model-arn", "inference-profile-arn"):
            raise ValidationException(
                f"The modelSource.copyFrom {copy_from} is not a foundation-model ARN or a system-defined inference "
                "profile's ARN. Copy from arn:aws:bedrock:<region>::foundation-model/<model id> or "
                "arn:aws:bedrock:<region>:<account>:inference-profile/<profile id>."
            )
        if ref.account is not None and ref.account != self.account:
            raise ResourceNotFoundException(
                f"The inference profile {copy_from} was not found: it names account {ref.account}; this server "
                f"answers as account {self.account}."
            )
        model = catalog.get(ref.model_id)
        if model is None:
            raise ResourceNotFoundException(
                f"The model {ref.model_id} was not found. Copy from a catalog model (ListFoundationModels) or a "
                "system-defined inference profile (ListInferenceProfiles)."
            )
        # The same rules as invoking the source directly from this region: its region, on demand, geography.
        self.regions.inference_region(model, ref, region)
        where = self.regions.of(model)
        if ref.kind == "foundation-model-arn":
            return model.model_id, (foundation_model_arn(model.model_id, region),)
        destinations = where.profile_regions(ref.geo or "")
        return model.model_id, tuple(foundation_model_arn(model.model_id, r) for r in destinations)

    async def create(
        self,
        *,
        region: str,
        name: str,
        copy_from: str,
        description: str | None = None,
        tags: list[tuple[str, str]] | None = None,
        client_token: str | None = None,
    ) -> ApplicationProfile:
        """A new profile (ACTIVE at once), or the one an earlier create with the same token made."""
        tags = check_tags(tags or [])
        if len(tags) > MAX_TAGS:
            raise TooManyTagsException(
                f"An inference profile can carry at most {MAX_TAGS} tags; this request has {len(tags)}.",
                resourceName=name,
            )
        digest = request_digest(name, copy_from, description, sorted(tags))
        if client_token is not None:
            existing = await asyncio.to_thread(self.store.find_token, region, client_token)
            if existing is not None:
                return self._repeat(existing, digest)
        model_id, models = self._source(copy_from, region)
        if sum(1 for p in self._by_arn.values() if p.region == region) >= MAX_PROFILES:
            raise ServiceQuotaExceededException(
                f"This account already has {MAX_PROFILES} application inference profiles in {region}. Delete one "
                "(DeleteInferenceProfile) before creating another."
            )
        profile_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
        now = self._clock()
        profile = ApplicationProfile(
            profile_id, application_profile_arn(region, self.account, profile_id), region, name, description,
            model_id, copy_from, models, now, now, client_token, digest,
        )
        stored = await asyncio.to_thread(self._insert, profile)
        if stored is not profile:
            return self._repeat(stored, digest)
        self._by_arn[profile.arn] = profile
        self._tags[profile.arn] = ()
        try:
            await self.tagging.put(profile.arn, tags)
        except BaseException:
            await self._forget(profile)
            raise
        return profile

    def _insert(self, profile: ApplicationProfile) -> ApplicationProfile:
        return insert_once(self.store, profile, lambda: ConflictException(
            f"An inference profile named {profile.name} already exists in this account and region. Choose another "
            "inferenceProfileName, or delete the existing one first."
        ))

    @staticmethod
    def _repeat(existing: ApplicationProfile, digest: str) -> ApplicationProfile:
        return same_request(existing, digest, lambda: ConflictException(
            "The clientRequestToken was already used for a different CreateInferenceProfile request; use a new "
            "token for a new request."
        ))

    def is_application(self, identifier: str) -> bool:
        """Whether an inference profile identifier names an application profile (its ARN or its 12-character id)
        rather than a system-defined one."""
        return f":{RESOURCE_TYPE}/" in identifier or RESOURCE_ID.match(identifier) is not None

    def get(self, region: str, identifier: str) -> ApplicationProfile:
        """A profile of ``region`` by ARN or id; ResourceNotFoundException otherwise."""
        arn = identifier if identifier.startswith("arn:") else application_profile_arn(region, self.account,
                                                                                      identifier)
        profile = self._by_arn.get(arn)
        if profile is None or profile.region != region:
            raise ResourceNotFoundException(
                f"The inference profile {identifier} doesn't exist in {region}. ListInferenceProfiles with "
                "typeEquals APPLICATION lists this account's application inference profiles."
            )
        return profile

    def listed(self, region: str) -> list[ApplicationProfile]:
        """The profiles of ``region``, oldest first."""
        return sorted((p for p in self._by_arn.values() if p.region == region),
                      key=lambda p: (p.created_at, p.profile_id))

    async def delete(self, region: str, identifier: str) -> None:
        profile = self.get(region, identifier)
        await self._forget(profile)

    async def _forget(self, profile: ApplicationProfile) -> None:
        await asyncio.to_thread(self.store.delete, profile.profile_id)
        await self.tagging.drop(profile.arn)
        self._by_arn.pop(profile.arn, None)
        self._tags.pop(profile.arn, None)

    # ------------------------------------------------------------------------------------------- invocation

    def for_invocation(self, ref: ModelRef, region: str) -> tuple[ApplicationProfile, ModelRef, Tags]:
        """The profile a runtime request names by ARN, the identifier it routes as (its source) and its tags."""
        if ref.region is not None and ref.region != region:
            raise ValidationException(
                f"{INVALID_MODEL_IDENTIFIER} The ARN {ref.requested} names an inference profile in {ref.region}, but "
                f"the request was signed for {region}. Sign the request for {ref.region}."
            )
        profile = self._by_arn.get(ref.requested)
        if profile is None:
            raise ResourceNotFoundException(
                f"The inference profile {ref.requested} was not found. Check the ARN (ListInferenceProfiles with "
                "typeEquals APPLICATION lists this account's application inference profiles)."
            )
        return profile, parse_model_ref(profile.source_arn), self._tags.get(profile.arn, ())
