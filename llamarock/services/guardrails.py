"""Guardrails: CreateGuardrail, Get/List/Update/DeleteGuardrail, CreateGuardrailVersion, and applying a guardrail
version to content (ApplyGuardrail, and the runtime operations' guardrailConfig through :meth:`apply`).

A guardrail has a working DRAFT (UpdateGuardrail changes it) and numbered versions, snapshots of the DRAFT that never
change (CreateGuardrailVersion makes them, 1, 2, 3...). Its ARN is
``arn:aws:bedrock:<region>:<account>:guardrail/<id>``; requests name it by that ARN or by its id, and a version by
``DRAFT`` or its number. Policies are evaluated locally by ``llamarock.guardrails``; denied topics, content filters
and contextual grounding embed text with the embedding model the server serves (docs/guardrails.md).

The database is the record; this process keeps every version in memory too (and each version's evaluator, with its
compiled words and regexes and embedded topics), so that applying a guardrail never waits for the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import secrets
import string
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from llamarock.bedrock import catalog
from llamarock.errors import (
    ConflictException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    TooManyTagsException,
    ValidationException,
)
from llamarock.guardrails import config
from llamarock.guardrails.evaluate import Evaluator, Shared
from llamarock.services.embeddings import EmbeddingService
from llamarock.services.idempotency import request_digest, same_request
from llamarock.services.tagging import MAX_TAGS, TaggableKind, TaggingService, check_tags
from llamarock.storage.guardrails import DRAFT, Guardrail, GuardrailStore

__all__ = ["DRAFT", "Guardrail", "GuardrailService"]

RESOURCE_TYPE = "guardrail"
# AWS's default quotas: guardrails per account and region, versions per guardrail.
MAX_GUARDRAILS = 100
MAX_VERSIONS = 20
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ARN = re.compile(r"arn:aws(?:-[^:]+)?:bedrock:(?P<region>[a-z0-9-]{1,20}):(?P<account>\d{12}):guardrail/"
                  r"(?P<id>[a-z0-9]+)")
VECTOR_CACHE = 4096
NOT_FOUND = "The guardrail identifier or version provided in the request does not exist."


class GuardrailService:
    """The guardrails of this server."""

    def __init__(
        self,
        store: GuardrailStore,
        tagging: TaggingService,
        embeddings: EmbeddingService | None,
        account: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.tagging = tagging
        self.embeddings = embeddings
        self.account = account
        self._clock = clock
        self._versions: dict[tuple[str, str], Guardrail] = {}
        self._evaluators: dict[tuple[str, str], tuple[datetime, Evaluator]] = {}
        self._shared = Shared()  # the content classifier and topic background of the served embedding model
        self._lock = asyncio.Lock()
        # Vectors of recently checked segments: a conversation sends its earlier turns again with each request,
        # and only the new text needs embedding (oldest forgotten first).
        self._vectors: dict[str, list[float]] = {}
        tagging.register(RESOURCE_TYPE, TaggableKind(self._exists))

    async def load(self) -> None:
        """Read every guardrail version (at start-up)."""
        self._versions = {(g.guardrail_id, g.version): g for g in await asyncio.to_thread(self.store.all)}

    def _exists(self, region: str, arn: str) -> bool:
        match = _ARN.fullmatch(arn)
        draft = self._versions.get((match["id"], DRAFT)) if match is not None else None
        return draft is not None and draft.region == region

    def arn(self, region: str, guardrail_id: str) -> str:
        return f"arn:aws:bedrock:{region}:{self.account}:guardrail/{guardrail_id}"

    # ------------------------------------------------------------------------------------------- lookups

    def _draft(self, region: str, identifier: str) -> Guardrail:
        """The DRAFT of the guardrail ``identifier`` (id or ARN) names in ``region``."""
        guardrail_id = identifier
        match = _ARN.fullmatch(identifier)
        if match is not None:
            if match["account"] != self.account or match["region"] != region:
                raise ResourceNotFoundException(
                    f"{NOT_FOUND} The ARN {identifier} names account {match['account']} in {match['region']}; this "
                    f"server answers as account {self.account}, and the request was signed for {region}."
                )
            guardrail_id = match["id"]
        draft = self._versions.get((guardrail_id, DRAFT))
        if draft is None or draft.region != region:
            raise ResourceNotFoundException(
                f"{NOT_FOUND} No guardrail {identifier} exists in {region}; ListGuardrails lists this account's "
                "guardrails."
            )
        return draft

    async def resolve(self, region: str, identifier: str, version: str | None = None) -> Guardrail:
        """The guardrail version a request names (``version`` None or DRAFT: the working draft);
        ResourceNotFoundException, in Bedrock's words, when it does not exist. Its ``blocked_input`` and
        ``blocked_outputs`` are the blockedInputMessaging and blockedOutputsMessaging (see :meth:`blocked_message`).
        Answers from memory: runtime operations call it to refuse an unknown guardrail before any work."""
        return self._resolve(region, identifier, version)

    def _resolve(self, region: str, identifier: str, version: str | None = None) -> Guardrail:
        draft = self._draft(region, identifier)
        if version is None or version == DRAFT:
            return draft
        found = self._versions.get((draft.guardrail_id, version))
        if found is None:
            raise ResourceNotFoundException(
                f"{NOT_FOUND} Guardrail {identifier} has no version {version}; ListGuardrails with its "
                "guardrailIdentifier lists its versions."
            )
        return found

    def get(self, region: str, identifier: str, version: str | None = None) -> Guardrail:
        """GetGuardrail."""
        return self._resolve(region, identifier, version)

    def listed(self, region: str, identifier: str | None = None) -> list[Guardrail]:
        """ListGuardrails: every guardrail's DRAFT, or (``identifier``) every version of one guardrail."""
        if identifier is not None:
            draft = self._draft(region, identifier)
            versions = [g for (gid, _), g in self._versions.items() if gid == draft.guardrail_id]
            return sorted(versions, key=lambda g: (g.version != DRAFT, int(g.version) if g.version != DRAFT else 0))
        drafts = [g for (_, version), g in self._versions.items() if version == DRAFT and g.region == region]
        return sorted(drafts, key=lambda g: (g.created_at, g.guardrail_id))

    # ------------------------------------------------------------------------------------------- operations

    @staticmethod
    def _settings(params: dict[str, Any]) -> dict[str, Any]:
        """The members of a Create/UpdateGuardrail request a guardrail keeps, checked."""
        return {
            "name": params["name"],
            "description": params.get("description"),
            "policies": config.policies(params),
            "blocked_input": params["blockedInputMessaging"],
            "blocked_outputs": params["blockedOutputsMessaging"],
            "kms_key_id": params.get("kmsKeyId"),
            "cross_region": (params.get("crossRegionConfig") or {}).get("guardrailProfileIdentifier"),
        }

    async def create(self, region: str, params: dict[str, Any]) -> Guardrail:
        """CreateGuardrail: a new guardrail's DRAFT (READY at once), or the one an earlier create with the same
        ``clientRequestToken`` made."""
        tags = check_tags([(tag["key"], tag["value"]) for tag in params.get("tags") or []])
        if len(tags) > MAX_TAGS:
            raise TooManyTagsException(
                f"A guardrail can carry at most {MAX_TAGS} tags; this request has {len(tags)}.",
                resourceName=params["name"],
            )
        settings = self._settings(params)
        token = params.get("clientRequestToken")
        digest = request_digest(settings, sorted(tags))
        async with self._lock:
            if token is not None:
                existing = await asyncio.to_thread(self.store.find_token, region, token)
                if existing is not None:
                    return self._repeat(existing, digest, "CreateGuardrail")
            if sum(1 for (_, v), g in self._versions.items() if v == DRAFT and g.region == region) >= MAX_GUARDRAILS:
                raise ServiceQuotaExceededException(
                    f"This account already has {MAX_GUARDRAILS} guardrails in {region}. Delete one (DeleteGuardrail) "
                    "before creating another."
                )
            await self._check_name(region, settings["name"])
            guardrail_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
            now = self._clock()
            guardrail = Guardrail(guardrail_id=guardrail_id, version=DRAFT, arn=self.arn(region, guardrail_id),
                                  region=region, created_at=now, updated_at=now, client_token=token,
                                  request_digest=digest, **settings)
            await asyncio.to_thread(self.store.insert, guardrail)
            self._versions[(guardrail_id, DRAFT)] = guardrail
        try:
            await self.tagging.put(guardrail.arn, tags)
        except BaseException:
            await self._forget(guardrail.guardrail_id)
            raise
        return guardrail

    async def _check_name(self, region: str, name: str, other_than: str | None = None) -> None:
        if await asyncio.to_thread(self.store.name_taken, region, name, other_than):
            raise ConflictException(
                f"A guardrail named {name} already exists in this account and region. Choose another name, or "
                "delete the existing guardrail first."
            )

    @staticmethod
    def _repeat(existing: Guardrail, digest: str, operation: str) -> Guardrail:
        return same_request(existing, digest, lambda: ConflictException(
            f"The clientRequestToken was already used for a different {operation} request; use a new token for a "
            "new request."
        ))

    async def update(self, region: str, identifier: str, params: dict[str, Any]) -> Guardrail:
        """UpdateGuardrail: the DRAFT takes the request's configuration whole (a policy left out is removed)."""
        settings = self._settings(params)
        async with self._lock:
            draft = self._draft(region, identifier)
            if settings["name"] != draft.name:
                await self._check_name(region, settings["name"], draft.guardrail_id)
            updated = dataclasses.replace(draft, updated_at=max(self._clock(), draft.updated_at), **settings)
            await asyncio.to_thread(self.store.replace, updated)
            self._versions[(draft.guardrail_id, DRAFT)] = updated
            self._evaluators.pop((draft.guardrail_id, DRAFT), None)
        return updated

    async def create_version(self, region: str, identifier: str, description: str | None = None,
                             client_token: str | None = None) -> Guardrail:
        """CreateGuardrailVersion: an immutable snapshot of the DRAFT, numbered one past the last."""
        digest = request_digest(description)
        async with self._lock:
            draft = self._draft(region, identifier)
            if client_token is not None:
                existing = await asyncio.to_thread(self.store.find_version_token, draft.guardrail_id, client_token)
                if existing is not None:
                    return self._repeat(existing, digest, "CreateGuardrailVersion")
            count = sum(1 for (gid, v) in self._versions if gid == draft.guardrail_id and v != DRAFT)
            if count >= MAX_VERSIONS:
                raise ServiceQuotaExceededException(
                    f"Guardrail {draft.guardrail_id} already has {MAX_VERSIONS} versions. Delete one "
                    "(DeleteGuardrail with guardrailVersion) before creating another."
                )
            now = self._clock()
            version = dataclasses.replace(
                draft, version=str(draft.next_version), description=description or draft.description,
                created_at=now, updated_at=now, client_token=client_token, request_digest=digest, next_version=0,
            )
            counted = dataclasses.replace(draft, next_version=draft.next_version + 1)
            await asyncio.to_thread(self.store.add_version, counted, version)
            self._versions[(draft.guardrail_id, DRAFT)] = counted
            self._versions[(draft.guardrail_id, version.version)] = version
        return version

    async def delete(self, region: str, identifier: str, version: str | None = None) -> None:
        """DeleteGuardrail: one numbered version, or (``version`` None) the guardrail and all its versions."""
        async with self._lock:
            found = self._resolve(region, identifier, version)
            if version is None:
                await self._forget(found.guardrail_id)
            else:
                await asyncio.to_thread(self.store.delete, found.guardrail_id, version)
                self._versions.pop((found.guardrail_id, version), None)
                self._evaluators.pop((found.guardrail_id, version), None)

    async def _forget(self, guardrail_id: str) -> None:
        draft = self._versions.get((guardrail_id, DRAFT))
        await asyncio.to_thread(self.store.delete, guardrail_id)
        for key in [k for k in self._versions if k[0] == guardrail_id]:
            self._versions.pop(key, None)
            self._evaluators.pop(key, None)
        if draft is not None:
            await self.tagging.drop(draft.arn)

    # ------------------------------------------------------------------------------------------- applying

    def evaluator(self, guardrail: Guardrail) -> Evaluator:
        """The evaluator of a guardrail version (made once per version, and again after the DRAFT changes)."""
        key = (guardrail.guardrail_id, guardrail.version)
        cached = self._evaluators.get(key)
        if cached is None or cached[0] != guardrail.updated_at:
            cached = (guardrail.updated_at, Evaluator(guardrail.policies, self._shared))
            self._evaluators[key] = cached
        return cached[1]

    @staticmethod
    def blocked_message(guardrail: Guardrail, source: Literal["INPUT", "OUTPUT"]) -> str:
        """What replaces blocked content: blockedInputMessaging on INPUT, blockedOutputsMessaging on OUTPUT."""
        return guardrail.blocked_input if source == "INPUT" else guardrail.blocked_outputs

    async def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        if self.embeddings is None:
            raise ValidationException("No embedding model is served, so denied topics, content filters and "
                                      "contextual grounding cannot be evaluated.")
        model = next((m.model_id for m in catalog.EMBEDDING_MODELS if self.embeddings.for_model(m.model_id)), None)
        if model is None:
            raise ValidationException(
                "No embedding deployment serves an embedding model, so denied topics, content filters and contextual "
                "grounding cannot be evaluated. Configure [[embedding_deployments]] (docs/embeddings.md)."
            )
        known = {t: self._vectors[t] for t in texts if t in self._vectors}
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        if missing:
            for text, vector in zip(missing, (await self.embeddings.embed(model, missing)).vectors, strict=True):
                known[text] = self._vectors[text] = vector
                while len(self._vectors) > VECTOR_CACHE:
                    self._vectors.pop(next(iter(self._vectors)))
        return [known[t] for t in texts]

    async def apply(self, region: str, identifier: str, version: str | None, source: Literal["INPUT", "OUTPUT"],
                    content: list[dict[str, Any]], output_scope: str = "INTERVENTIONS") -> dict[str, Any]:
        """ApplyGuardrail's output body for ``content`` (ApplyGuardrail's ``content`` shape) checked by a guardrail
        version as ``source``."""
        guardrail = self._resolve(region, identifier, version)
        return await self.evaluator(guardrail).apply(source, content, output_scope,
                                                     self.blocked_message(guardrail, source), self._embed)

    # ------------------------------------------------------------------------------------------- shapes

    @staticmethod
    def shown(guardrail: Guardrail) -> dict[str, Any]:
        """GetGuardrail's output members."""
        shown: dict[str, Any] = {
            "name": guardrail.name,
            "guardrailId": guardrail.guardrail_id,
            "guardrailArn": guardrail.arn,
            "version": guardrail.version,
            "status": "READY",
            **guardrail.policies,
            "createdAt": guardrail.created_at,
            "updatedAt": guardrail.updated_at,
            "statusReasons": [],
            "failureRecommendations": [],
            "blockedInputMessaging": guardrail.blocked_input,
            "blockedOutputsMessaging": guardrail.blocked_outputs,
        }
        if guardrail.description is not None:
            shown["description"] = guardrail.description
        if guardrail.cross_region is not None:
            profile_id = guardrail.cross_region.rsplit("/", 1)[-1]
            shown["crossRegionDetails"] = {"guardrailProfileId": profile_id}
            if guardrail.cross_region.startswith("arn:"):
                shown["crossRegionDetails"]["guardrailProfileArn"] = guardrail.cross_region
        if guardrail.kms_key_id is not None and re.fullmatch(r"arn:aws(-[^:]+)?:kms:[a-zA-Z0-9-]*:[0-9]{12}:key/"
                                                             r"[a-zA-Z0-9-]{36}", guardrail.kms_key_id):
            shown["kmsKeyArn"] = guardrail.kms_key_id
        return shown

    @staticmethod
    def summary(guardrail: Guardrail) -> dict[str, Any]:
        """ListGuardrails' summary of a version."""
        shown: dict[str, Any] = {
            "id": guardrail.guardrail_id, "arn": guardrail.arn, "status": "READY", "name": guardrail.name,
            "version": guardrail.version, "createdAt": guardrail.created_at, "updatedAt": guardrail.updated_at,
        }
        if guardrail.description is not None:
            shown["description"] = guardrail.description
        return shown
