"""Custom Model Import's metering: each billed 5-minute window of an imported model's copy (its Custom Model Units,
``services/model_import.py``) becomes a usage row of operation ``CustomModelUnits`` priced as the window costs, on
the imported model's ARN, so that ``llamarock usage`` and the cost report show it beside the model's invocations
(which are themselves priced at zero: an imported model is billed by the CMU-minute, not by the token)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

from llamarock.observability.records import InvocationRecord
from llamarock.observability.usage import UsageRecorder
from llamarock.services.model_import import CmuWindow

OPERATION = "CustomModelUnits"


def cmu_biller(usage: UsageRecorder, principal_arn: str) -> Callable[[CmuWindow], None]:
    """What the import service calls for each billed window: one usage row holding the window's cost."""

    def bill(window: CmuWindow) -> None:
        usage.record(InvocationRecord(
            request_id=str(uuid.uuid4()), operation=OPERATION, model_identifier=window.model.arn,
            principal_arn=principal_arn, region=window.model.region, started_at=window.started,
            model_id=window.model.arn, deployment=f"imported-{window.model.model_id}",
            request_metadata={"customModelUnits": str(window.units)}, flat_cost_usd=window.cost,
        ))

    return bill
