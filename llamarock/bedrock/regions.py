"""Regions: which catalog model is offered where, and where a request for it runs.

A request's region is the region of its SigV4 credential scope (the server's ``region`` setting for requests that
carry none). The catalog says, per model, the regions that run it, those where it may be invoked on demand (by its
own id or foundation-model ARN) and the geographies of its system-defined cross-region inference profiles; the
``model_regions`` and ``on_demand_regions`` settings override the first two. The rules, as on Bedrock
(docs/regions.md):

* a base model id or foundation-model ARN runs in the request's region, if the model is offered on demand there;
  if it is offered there only through an inference profile, Bedrock's "on-demand throughput isn't supported"
  ValidationException says to use the profile; anywhere else the identifier is invalid;
* a cross-region inference profile (``us.``, ``eu.``, ``apac.``) is accepted from any region of its geography and
  runs in one of the model's regions of that geography: the request's own region when it runs the model there,
  else the first one the catalog lists;
* an ARN names a resource of one region: the request must be signed for that region.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llamarock.bedrock import catalog
from llamarock.bedrock.catalog import CatalogModel
from llamarock.bedrock.model_ids import INVALID_MODEL_IDENTIFIER, ModelRef
from llamarock.errors import ValidationException

# Geography of a cross-region inference profile -> the prefix of the region names it spans.
GEOGRAPHIES: dict[str, str] = {"us": "us-", "eu": "eu-", "apac": "ap-"}
GEOGRAPHY_LABELS: dict[str, str] = {"us": "US", "eu": "EU", "apac": "APAC"}

ON_DEMAND_UNSUPPORTED = (
    "Invocation of model ID {model_id} with on-demand throughput isn\u2019t supported. Retry your request with the ID "
    "or ARN of an inference profile that contains this model."
)


def geography(region: str) -> str | None:
    """The inference-profile geography a region belongs to (``us``, ``eu``, ``apac``), or None."""
    for geo, prefix in GEOGRAPHIES.items():
        if region.startswith(prefix):
            return geo
    return None


def _words(items: Sequence[str]) -> str:
    return ", ".join(items) if items else "no region"


@dataclass(frozen=True)
class Availability:
    """Where one model is offered: the regions running it, those taking it on demand, its profile geographies."""

    model: CatalogModel
    regions: tuple[str, ...]
    on_demand_regions: tuple[str, ...]

    def profile_regions(self, geo: str) -> tuple[str, ...]:
        """The destination regions of the model's ``geo`` inference profile; empty when it has none."""
        if geo not in self.model.geo_profiles or geo not in GEOGRAPHIES:
            return ()
        return tuple(r for r in self.regions if r.startswith(GEOGRAPHIES[geo]))

    def profiles(self) -> tuple[str, ...]:
        """The geographies of the model's system-defined inference profiles that have a destination region."""
        return tuple(geo for geo in self.model.geo_profiles if self.profile_regions(geo))

    def profile_from(self, region: str) -> str | None:
        """The geography of the model's inference profile that a request signed for ``region`` may use."""
        geo = geography(region)
        return geo if geo is not None and self.profile_regions(geo) else None

    def on_demand_in(self, region: str) -> bool:
        return region in self.on_demand_regions

    def listed_in(self, region: str) -> bool:
        """Whether the region's model listing shows the model: it runs there, or a profile reaches it from there."""
        return region in self.regions or region in self.on_demand_regions or self.profile_from(region) is not None

    def inference_types(self, region: str) -> list[str]:
        """``inferenceTypesSupported`` in ``region``. Provisioned throughput is offered for every catalog model that
        offers it (not the embedding model ids: Bedrock provisions those under other ids)."""
        types = ["ON_DEMAND"] if self.on_demand_in(region) else []
        if self.model.provisioned:
            types.append("PROVISIONED")
        if self.profile_from(region) is not None:
            types.append("INFERENCE_PROFILE")
        return types


class RegionMap:
    """The catalog's regions with the configured overrides applied.

    ``model_regions`` replaces a model's regions (and its on-demand regions, unless ``on_demand_regions`` names
    the model too); ``on_demand_regions`` replaces only the on-demand ones (an empty list: profile only).
    """

    def __init__(
        self,
        model_regions: Mapping[str, Sequence[str]] | None = None,
        on_demand_regions: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        model_regions = model_regions or {}
        on_demand_regions = on_demand_regions or {}
        unknown = sorted((set(model_regions) | set(on_demand_regions)) - set(catalog.BY_ID))
        if unknown:
            raise ValueError(
                f"model_regions / on_demand_regions name models the catalog lacks: {', '.join(unknown)}; use catalog "
                "model ids (`llamarock models` lists them)."
            )
        self._by_id: dict[str, Availability] = {}
        for model in catalog.MODELS:
            regions = tuple(model_regions.get(model.model_id, model.regions))
            if model.model_id in on_demand_regions:
                on_demand = tuple(on_demand_regions[model.model_id])
            elif model.model_id in model_regions:
                on_demand = regions
            else:
                on_demand = model.on_demand_regions
            self._by_id[model.model_id] = Availability(model, regions, on_demand)

    def of(self, model: CatalogModel) -> Availability:
        return self._by_id[model.model_id]

    def inference_region(self, model: CatalogModel, ref: ModelRef, region: str) -> str:
        """Where a request signed for ``region`` that names ``model`` as ``ref`` runs, or Bedrock's refusal."""
        where = self.of(model)
        if ref.region is not None and ref.region != region:
            raise ValidationException(
                f"{INVALID_MODEL_IDENTIFIER} The ARN {ref.requested} names a resource in {ref.region}, but the request "
                f"was signed for {region}. Sign the request for {ref.region}, or use the ARN of {region}."
            )
        if ref.kind in ("model-id", "foundation-model-arn"):
            if where.on_demand_in(region):
                return region
            geo = where.profile_from(region)
            if geo is not None or region in where.regions:
                hint = f" In {region}, use {geo}.{model.model_id}." if geo is not None else ""
                raise ValidationException(ON_DEMAND_UNSUPPORTED.format(model_id=model.model_id) + hint)
            raise ValidationException(f"{INVALID_MODEL_IDENTIFIER} {self._offer(where)}")
        geo = ref.geo or ""
        destinations = where.profile_regions(geo)
        if not destinations:
            profiles = ", ".join(f"{g}.{model.model_id}" for g in where.profiles()) or "none"
            raise ValidationException(
                f"{INVALID_MODEL_IDENTIFIER} {model.model_id} has no {geo}. inference profile; its inference "
                f"profiles: {profiles}."
            )
        if geography(region) != geo:
            raise ValidationException(
                f"{INVALID_MODEL_IDENTIFIER} The {geo}. inference profile can be used only from {GEOGRAPHIES[geo]}* "
                f"regions, not from {region}. {self._offer(where)}"
            )
        return region if region in destinations else destinations[0]

    @staticmethod
    def _offer(where: Availability) -> str:
        """Where the model can be reached, for error messages."""
        model_id = where.model.model_id
        profiles = [f"{geo}.{model_id} from {GEOGRAPHIES[geo]}* regions" for geo in where.profiles()]
        text = f"{model_id} is offered on demand in {_words(where.on_demand_regions)}"
        return text + (f", and through {' or '.join(profiles)}." if profiles else ".")
