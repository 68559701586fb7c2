"""botocore's service models, loaded once: the source of truth for shapes and error statuses."""

from __future__ import annotations

from functools import cache

import botocore.session
from botocore.model import OperationModel, ServiceModel

RUNTIME = "bedrock-runtime"


@cache
def service_model(service: str = RUNTIME) -> ServiceModel:
    """The botocore service model of one Bedrock service."""
    return botocore.session.get_session().get_service_model(service)


def operation_model(operation: str, service: str = RUNTIME) -> OperationModel:
    return service_model(service).operation_model(operation)


@cache
def error_status(code: str, service: str = RUNTIME) -> int | None:
    """The HTTP status botocore's model gives an error shape, or None when the model has no such shape."""
    model = service_model(service)
    if code not in model.shape_names:
        return None
    error = model.shape_for(code).metadata.get("error") or {}
    status = error.get("httpStatusCode")
    return int(status) if status is not None else None
