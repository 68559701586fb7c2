"""Model access as a self-hosted server answers it: every catalog model is authorised, entitled and agreed to.

GetFoundationModelAvailability says so (AVAILABLE / AUTHORIZED; the region is AVAILABLE where the catalog lists the
model). ListFoundationModelAgreementOffers offers one agreement per model: its terms are the model's licence and
the prices this server reports usage at. Agreements accepted (CreateFoundationModelAgreement) and the use case
submitted (PutUseCaseForModelAccess) are kept in the store and read back; neither is needed to invoke a model.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from llamarock.bedrock import catalog, pricing
from llamarock.bedrock.catalog import CatalogModel
from llamarock.bedrock.regions import RegionMap
from llamarock.errors import ResourceNotFoundException, ValidationException
from llamarock.settings import PriceSettings
from llamarock.storage.model_access import ModelAccessStore

LICENCES = {
    "llama2": "https://ai.meta.com/llama/license/",
    "llama3": "https://llama.meta.com/llama3/license/",
    "llama3.1": "https://llama.meta.com/llama3_1/license/",
    "llama3.2": "https://www.llama.com/llama3_2/license/",
    "llama3.3": "https://www.llama.com/llama3_3/license/",
    "llama4": "https://www.llama.com/llama4/license/",
}


def offer_token(model_id: str) -> str:
    """The token of a model's one offer (stable, so that a client may accept it at any time)."""
    return "llamarock-offer-" + hashlib.sha256(model_id.encode()).hexdigest()[:32]


class ModelAccessService:
    """Model availability, agreements and the model-access use case."""

    def __init__(self, store: ModelAccessStore, regions: RegionMap, prices: Mapping[str, PriceSettings]) -> None:
        self.store = store
        self.regions = regions
        self.prices = prices

    @staticmethod
    def _model(model_id: str) -> CatalogModel:
        model = catalog.get(model_id)
        if model is None:
            raise ResourceNotFoundException(
                f"The model {model_id} was not found. Give a catalog model id (ListFoundationModels lists them)."
            )
        return model

    def availability(self, region: str, model_id: str) -> dict[str, Any]:
        """GetFoundationModelAvailability: available and authorised, in the regions that list the model."""
        model = self._model(model_id)
        listed = self.regions.of(model).listed_in(region)
        return {
            "modelId": model.model_id,
            "agreementAvailability": {"status": "AVAILABLE"},
            "authorizationStatus": "AUTHORIZED",
            "entitlementAvailability": "AVAILABLE",
            "regionAvailability": "AVAILABLE" if listed else "NOT_AVAILABLE",
        }

    def offers(self, model_id: str) -> dict[str, Any]:
        """ListFoundationModelAgreementOffers: the model's one offer."""
        model = self._model(model_id)
        rates = pricing.rates(model.model_id, self.prices)
        rate_card = [] if rates is None else [
            {"dimension": "InputTokens", "price": str(rates.input_per_million), "unit": "1M tokens",
             "description": f"{model.name} input tokens, USD per 1M (as llamarock reports usage)"},
            {"dimension": "OutputTokens", "price": str(rates.output_per_million), "unit": "1M tokens",
             "description": f"{model.name} output tokens, USD per 1M (as llamarock reports usage)"},
        ]
        return {
            "modelId": model.model_id,
            "offers": [{
                "offerId": offer_token(model.model_id).removeprefix("llamarock-offer-")[:16],
                "offerToken": offer_token(model.model_id),
                "termDetails": {
                    "usageBasedPricingTerm": {"rateCard": rate_card},
                    "legalTerm": {"url": LICENCES.get(model.family, "https://www.llama.com/")},
                    "supportTerm": {"refundPolicyDescription": "Self-hosted: no charges are made by this server."},
                },
            }],
        }

    async def agree(self, model_id: str, token: str) -> str:
        """CreateFoundationModelAgreement: record the accepted offer."""
        model = self._model(model_id)
        if token != offer_token(model.model_id):
            raise ValidationException(
                f"The offerToken is not an offer for {model.model_id}. Pass the offerToken that "
                "ListFoundationModelAgreementOffers returns for this model."
            )
        await asyncio.to_thread(self.store.agree, model.model_id, token, datetime.now(UTC))
        return model.model_id

    async def disagree(self, model_id: str) -> None:
        """DeleteFoundationModelAgreement."""
        model = self._model(model_id)
        if not await asyncio.to_thread(self.store.disagree, model.model_id):
            raise ResourceNotFoundException(
                f"There is no agreement for {model.model_id} to delete. CreateFoundationModelAgreement makes one."
            )

    async def agreed(self, model_id: str) -> bool:
        return await asyncio.to_thread(self.store.agreement, model_id) is not None

    async def use_case(self) -> bytes:
        """GetUseCaseForModelAccess: the form last put."""
        form = await asyncio.to_thread(self.store.use_case)
        if form is None:
            raise ResourceNotFoundException(
                "No use case for model access has been submitted. PutUseCaseForModelAccess submits one (this server "
                "needs none to serve its models)."
            )
        return form

    async def put_use_case(self, form_data: bytes) -> None:
        await asyncio.to_thread(self.store.put_use_case, form_data, datetime.now(UTC))
