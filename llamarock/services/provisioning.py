"""Provisioned Throughput: create, read, update and delete provisioned models, run them, and price them.

A provisioned model holds ``modelUnits`` of one catalog model on the deployment that serves it: the scheduler
reserves capacity for it (see ``llamarock.scheduler``) from its creation until its deletion. It is ``Creating`` for
``provisioning_seconds`` (and at least until that deployment has loaded), then ``InService``; changing its model
makes it ``Updating`` the same way. Only an InService provisioned model serves invocations through its ARN. A
deployment that failed to load makes it ``Failed``.

The database is the record (it survives restarts); this process keeps the live models in memory too, so that the
invocation path never waits for the database, and a background task (:meth:`ProvisioningService.run`) moves them
to InService when they are due. Billing runs from InService to deletion at the model's hourly price per unit
(``bedrock.pricing``); :func:`accrued_costs` sums it over any time window.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import dataclasses
import logging
import re
import secrets
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING

from llamarock.bedrock import catalog, pricing
from llamarock.bedrock.model_ids import ModelRef, foundation_model_arn, parse_model_ref, provisioned_model_arn
from llamarock.errors import (
    ConflictException,
    ModelNotReadyException,
    ResourceNotFoundException,
    ServiceQuotaExceededException,
    TooManyTagsException,
    ValidationException,
)
from llamarock.scheduler import Scheduler
from llamarock.services.deployments import DeploymentRegistry
from llamarock.services.idempotency import insert_once, request_digest, same_request
from llamarock.services.tagging import TaggableKind, TaggingService, check_tags
from llamarock.settings import PriceSettings, Settings
from llamarock.storage.db import ListFilter
from llamarock.storage.provisioned import ProvisionedModel, ProvisionedStore

if TYPE_CHECKING:
    from llamarock.services.custom_models import CustomModelService

# The stored shapes are part of this service's interface (routes take them from here, not from storage).
__all__ = ["ListFilter", "ProvisionedCost", "ProvisionedModel", "ProvisioningService", "accrued_costs", "add_months"]

log = logging.getLogger(__name__)

COMMITMENT_MONTHS = {"OneMonth": 1, "SixMonths": 6}
MAX_TAGS = 50
_ID_ALPHABET = string.ascii_lowercase + string.digits
_CONTEXT_VARIANT = re.compile(r":\d+k$")


@dataclass(frozen=True)
class ProvisionedCost:
    """What one provisioned model accrued over a window, for one model it held (a model change starts a new row).

    ``hourly_usd`` is the price per model unit per hour and ``cost_usd`` ``hours × units × hourly_usd``; both are
    None for a model with no provisioned price (configure one under ``[prices."<model id>"] provisioned_hourly``).
    """

    provisioned_model_arn: str
    provisioned_model_name: str
    model_id: str
    units: int
    hours: Decimal
    hourly_usd: Decimal | None
    cost_usd: Decimal | None


def accrued_costs(
    store: ProvisionedStore,
    prices: Mapping[str, PriceSettings],
    start: datetime,
    end: datetime,
    now: datetime | None = None,
) -> list[ProvisionedCost]:
    """Cost of every provisioned model (deleted ones included) InService during [start, end), exact in Decimal.

    The report of ``llamarock usage`` can call this with the settings' ``prices``; nothing here needs the server.
    """
    now = now or datetime.now(UTC)
    intervals = store.billing(start, end)
    names = store.names({i.provisioned_id for i in intervals})
    costs = []
    for interval in intervals:
        held_from = max(start, interval.started_at)
        held_until = min(end, interval.ended_at or now)
        if held_until <= held_from:
            continue
        hours = Decimal((held_until - held_from).total_seconds()) / Decimal(3600)
        arn, name = names.get(interval.provisioned_id, ("", ""))
        costs.append(ProvisionedCost(
            arn, name, interval.model_id, interval.units, hours, pricing.hourly_rate(interval.model_id, prices),
            pricing.provisioned_cost(interval.model_id, interval.units, hours, prices),
        ))
    return costs


def _model_arn(requested: str, region: str) -> str:
    """The ARN of what a provisioned model holds: a custom model's own ARN, or the catalog model's."""
    return requested if requested.startswith("arn:") else foundation_model_arn(requested, region)


def add_months(moment: datetime, months: int) -> datetime:
    """The same day and time ``months`` later (the month's last day when it is shorter)."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    return moment.replace(year=year, month=month, day=min(moment.day, calendar.monthrange(year, month)[1]))


class ProvisioningService:
    """The provisioned models of this server: the control-plane operations and the lookups invocations need."""

    def __init__(
        self,
        store: ProvisionedStore,
        registry: DeploymentRegistry,
        scheduler: Scheduler,
        settings: Settings,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.registry = registry
        self.scheduler = scheduler
        self.settings = settings
        self._clock = clock
        self._live: dict[str, ProvisionedModel] = {}
        self._changed = asyncio.Event()
        self.tagging: TaggingService | None = None
        # Custom models (LoRA adapters over a catalog model) a provisioned model may hold (set by create_app).
        self.custom_models: CustomModelService | None = None

    def taggable(self, tagging: TaggingService) -> None:
        """Make provisioned models taggable (TagResource and friends); their create-time tags go to ``tagging``."""
        self.tagging = tagging
        tagging.register("provisioned-model", TaggableKind(
            lambda region, arn: any(m.arn == arn and m.region == region for m in self._live.values())
        ))

    # ------------------------------------------------------------------------------------------- lifecycle

    async def load(self) -> None:
        """Read the live provisioned models and reserve their capacity (at start-up)."""
        for model in await asyncio.to_thread(self.store.live):
            self._remember(model)
            if self.tagging is not None and model.tags:
                # Provisioned models created before the tag store kept their tags in their own row.
                await self.tagging.seed(model.arn, list(model.tags))

    async def run(self) -> None:
        """Move provisioned models to InService (or Failed) when they are due; runs for the app's lifetime."""
        while True:
            try:
                await self.advance()
            except Exception:
                log.exception("cannot update the status of provisioned models; retrying")
            self._changed.clear()
            now = self._clock()
            # Sleep until the next one is due; those overdue wait for their deployment to load (checked each second).
            due = [
                (m.ready_at - now).total_seconds() for m in self._live.values()
                if m.status in ("Creating", "Updating") and m.ready_at is not None
            ]
            wait = max(0.01, min([1.0, *(d for d in due if d > 0)]))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)

    async def advance(self) -> None:
        """Finish every Creating/Updating provisioned model whose time has come and whose deployment is loaded."""
        now = self._clock()
        for model in list(self._live.values()):
            if model.status not in ("Creating", "Updating") or model.ready_at is None or model.ready_at > now:
                continue
            deployment = self.registry.for_model(model.desired_model_id)
            if deployment is None or deployment.error is not None:
                reason = deployment.error if deployment is not None else "no deployment serves it"
                failed = dataclasses.replace(
                    model, status="Failed", updated_at=now, ready_at=None,
                    failure_message=f"The model {model.desired_model_id} cannot be served: {reason}",
                )
                await asyncio.to_thread(self.store.save, failed)
                self._live[model.provisioned_id] = failed
                self.scheduler.unreserve(model.arn)
                continue
            if not deployment.engine.ready:
                continue
            done = dataclasses.replace(
                model, status="InService", model_id=model.desired_model_id, model_arn=model.desired_model_arn,
                foundation_model_arn=foundation_model_arn(model.desired_model_id, model.region),
                updated_at=model.ready_at, ready_at=None,
            )
            # Billing starts (or moves to the new model) when the provisioned model is due, not when observed.
            await asyncio.to_thread(self.store.save, done, bill_from=model.ready_at)
            self._remember(done)

    def _remember(self, model: ProvisionedModel) -> None:
        self._live[model.provisioned_id] = model
        if model.status == "Failed":
            return
        deployment = self.registry.for_model(model.model_id)
        if deployment is not None:
            self.scheduler.reserve(model.arn, model.name, model.model_id, deployment.name, model.units)

    # ------------------------------------------------------------------------------------------- models

    def _catalog_model(self, identifier: str, region: str) -> tuple[str, str]:
        """(catalog id, the model id as requested) for CreateProvisionedModelThroughput's ``modelId``.

        A model id, its context-length variant (``...:128k``, ``...:0:4k``) or its foundation-model ARN; or a custom
        model's ARN or name, which runs on its base model's deployment (the requested id is then its ARN).
        """
        if self.custom_models is not None and (":custom-model/" in identifier or (
                not identifier.startswith("arn:") and catalog.get(identifier) is None
                and self.custom_models.find(region, identifier) is not None)):
            custom = self.custom_models.base_model_of(identifier, region)
            return custom.base_model_id, custom.arn
        requested = identifier
        if identifier.startswith("arn:"):
            try:
                ref = parse_model_ref(identifier)
            except ValidationException:
                ref = None
            if ref is None or ref.kind != "foundation-model-arn":
                raise ResourceNotFoundException(
                    f"The model {identifier} was not found. Provisioned Throughput serves a catalog model: give its "
                    "model id or foundation-model ARN (`llamarock models` lists them)."
                )
            requested = ref.model_id
        requested = self.settings.aliases.get(requested, requested)
        candidate = requested
        for _ in range(3):
            if catalog.get(candidate) is not None:
                return candidate, requested
            candidate = _CONTEXT_VARIANT.sub("", candidate) if _CONTEXT_VARIANT.search(candidate) else (
                candidate.removesuffix(":0")
            )
        raise ResourceNotFoundException(
            f"The model {identifier} was not found. Provisioned Throughput serves a catalog model: give its model id "
            "or foundation-model ARN (`llamarock models` lists them)."
        )

    def _deployment_for(self, model_id: str, custom: bool = False) -> str:
        model = catalog.get(model_id)
        if model is not None and not model.provisioned and not custom:
            raise ValidationException(
                f"Provisioned Throughput isn't offered for {model_id}: it is served on demand only "
                "(GetFoundationModel's inferenceTypesSupported lists ON_DEMAND)."
            )
        deployment = self.registry.for_model(model_id)
        if deployment is None:
            raise ValidationException(
                f"No deployment of this server serves {model_id}, so it cannot be provisioned; add it to a "
                "[[deployments]] entry."
            )
        return deployment.name

    def _check_capacity(self, deployment: str, units: int, excluding: str | None, error: type[Exception]) -> None:
        wanted = self.scheduler.sequences_for(units)
        taken = self.scheduler.reserved(deployment, excluding=excluding)
        capacity = self.scheduler.max_parallel(deployment)
        if taken + wanted > capacity:
            raise error(
                f"{units} model units reserve {wanted} concurrent sequences, but deployment {deployment} runs "
                f"{capacity} (max_parallel) of which provisioned throughput already reserves {taken}. Provision "
                "fewer model units, delete another provisioned model, or raise the deployment's max_parallel."
            )

    # ------------------------------------------------------------------------------------------- operations

    async def create(
        self,
        *,
        region: str,
        account: str,
        name: str,
        model_identifier: str,
        units: int,
        commitment: str | None = None,
        tags: list[tuple[str, str]] | None = None,
        client_token: str | None = None,
    ) -> ProvisionedModel:
        """A new provisioned model (Creating), or the one an earlier create with the same token made."""
        tags = check_tags(tags or [])
        if len(tags) > MAX_TAGS:
            raise TooManyTagsException(
                f"A provisioned model can carry at most {MAX_TAGS} tags; this request has {len(tags)}.",
                resourceName=name,
            )
        model_id, requested = self._catalog_model(model_identifier, region)
        deployment = self._deployment_for(model_id, custom=requested.startswith("arn:"))
        digest = request_digest(name, model_identifier, units, commitment, sorted(tags))
        if client_token is not None:
            existing = await asyncio.to_thread(self.store.find_token, region, client_token)
            if existing is not None:
                return self._repeat(existing, digest)
        provisioned_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(12))
        arn = provisioned_model_arn(region, account, provisioned_id)
        self._check_capacity(deployment, units, None, ServiceQuotaExceededException)
        # Reserved before the write, so that two concurrent creates cannot both take the last capacity.
        self.scheduler.reserve(arn, name, model_id, deployment, units)
        now = self._clock()
        model_arn = _model_arn(requested, region)
        model = ProvisionedModel(
            provisioned_id, arn, region, name, model_id, model_arn, model_id, model_arn,
            foundation_model_arn(model_id, region), units, "Creating", commitment,
            add_months(now, COMMITMENT_MONTHS[commitment]) if commitment else None, now, now,
            now + timedelta(seconds=self.settings.provisioning_seconds), None, client_token, digest, tuple(tags),
        )
        try:
            stored = await asyncio.to_thread(self._insert, model)
        except BaseException:
            self.scheduler.unreserve(arn)
            raise
        if stored is not model:
            self.scheduler.unreserve(arn)
            return self._repeat(stored, digest)
        self._remember(model)
        self._changed.set()
        if self.tagging is not None:
            await self.tagging.put(model.arn, list(model.tags))
        return model

    def _insert(self, model: ProvisionedModel) -> ProvisionedModel:
        return insert_once(self.store, model, lambda: ValidationException(
            f"A provisioned model named {model.name} already exists in this account and region. Choose another "
            "provisionedModelName, or delete the existing one first."
        ))

    @staticmethod
    def _repeat(existing: ProvisionedModel, digest: str) -> ProvisionedModel:
        return same_request(existing, digest, lambda: ValidationException(
            "The clientRequestToken was already used for a different CreateProvisionedModelThroughput request; "
            "use a new token for a new request."
        ))

    async def get(self, region: str, identifier: str) -> ProvisionedModel:
        """A live provisioned model of ``region`` by ARN, name or id; ResourceNotFoundException otherwise."""
        await self.advance()
        found = await asyncio.to_thread(self.store.find, region, identifier)
        if found is None:
            raise ResourceNotFoundException(
                f"The provisioned model {identifier} was not found in {region}. Give the ARN or name of a "
                "provisioned model of this region (ListProvisionedModelThroughputs lists them)."
            )
        return found

    async def page(self, query: ListFilter) -> tuple[list[ProvisionedModel], bool]:
        """One page of ListProvisionedModelThroughputs and whether more follow."""
        await self.advance()
        return await asyncio.to_thread(self.store.page, query)

    async def update(
        self, region: str, identifier: str, new_name: str | None = None, new_model: str | None = None
    ) -> ProvisionedModel:
        """Rename at once; a new model makes the provisioned model Updating until it is InService again."""
        current = await self.get(region, identifier)
        changed = current
        now = self._clock()
        if new_model is not None:
            model_id, requested = self._catalog_model(new_model, region)
            model_arn = _model_arn(requested, region)
            if model_arn != current.model_arn:
                if current.status != "InService":
                    raise ValidationException(
                        f"The provisioned model {current.name} is {current.status}; change its model once it is "
                        "InService."
                    )
                self._check_capacity(self._deployment_for(model_id, custom=requested.startswith("arn:")),
                                     current.units, current.arn, ValidationException)
                changed = dataclasses.replace(
                    changed, status="Updating", desired_model_id=model_id, desired_model_arn=model_arn,
                    ready_at=now + timedelta(seconds=self.settings.provisioning_seconds),
                )
        if new_name is not None and new_name != current.name:
            changed = dataclasses.replace(changed, name=new_name)
        if changed is current:
            return current
        changed = dataclasses.replace(changed, updated_at=now)

        def write() -> None:
            with self.store.lock:
                if changed.name != current.name and self.store.name_taken(region, changed.name, current.provisioned_id):
                    raise ValidationException(
                        f"A provisioned model named {changed.name} already exists in this account and region. "
                        "Choose another desiredProvisionedModelName."
                    )
                self.store.save(changed)

        await asyncio.to_thread(write)
        self._remember(changed)
        self._changed.set()
        return changed

    async def delete(self, region: str, identifier: str) -> None:
        """Delete a provisioned model (billing stops); ConflictException while its commitment term runs."""
        current = await self.get(region, identifier)
        now = self._clock()
        if current.commitment_expires_at is not None and now < current.commitment_expires_at:
            raise ConflictException(
                f"You can't delete a Provisioned Throughput before the commitment term is over. {current.name} has "
                f"a {current.commitment} commitment that ends at "
                f"{current.commitment_expires_at.isoformat().replace('+00:00', 'Z')}."
            )
        await asyncio.to_thread(self.store.delete, current.provisioned_id, now)
        if self.tagging is not None:
            await self.tagging.drop(current.arn)
        self._live.pop(current.provisioned_id, None)
        self.scheduler.unreserve(current.arn)

    # ------------------------------------------------------------------------------------------- invocation

    def for_invocation(self, ref: ModelRef) -> ProvisionedModel:
        """The InService provisioned model a runtime request names by ARN, or the error Bedrock gives."""
        model = self._live.get(ref.provisioned_id or "")
        if model is None or model.arn != ref.requested:
            raise ResourceNotFoundException(
                f"The provisioned model {ref.requested} was not found. Check the ARN "
                "(ListProvisionedModelThroughputs lists this account's provisioned models)."
            )
        if model.status != "InService":
            detail = f": {model.failure_message}" if model.failure_message else "; retry in a moment"
            raise ModelNotReadyException(
                f"The provisioned model {model.name} is {model.status} and not ready for inference yet{detail}."
            )
        return model

    def live(self) -> list[ProvisionedModel]:
        return list(self._live.values())
