"""The operation table: every operation the server answers, described once, and how a request finds its row.

A row (:class:`~llamarock.context.Operation`) names the operation, its IAM action, the resource the action is on,
its handler, and whether it streams, is a model invocation or needs no authentication. The edge resolves each
request against this table once; auth, quotas, handlers, observers and ``docs/api-coverage.md`` all read the row.

How a method and raw path find their row:

1. llamarock's own endpoints (``/healthz``, ``/metrics``, ``/llamarock/...``) by exact method and path;
2. ``POST /model/{modelId}/{action}``: the action (the last path segment, so an ARN whose ``/`` arrives unencoded
   still works) against the bedrock-runtime operations whose ``requestUri`` is ``/model/{modelId}/<action>``;
3. every other ``requestUri`` of botocore's ``bedrock-runtime``, ``bedrock``, ``bedrock-agent-runtime`` and
   ``bedrock-agent`` models, matched on the raw path. The four share one port and the signing name ``bedrock``; no
   two of their URIs collide except bedrock-agent's and bedrock-agent-runtime's tagging operations (``/tags/{arn}``:
   the same operation on the same ARNs, answered by bedrock-agent's rows) and ``POST /agents/{id}/`` (PrepareAgent)
   against ``POST /agents/{id}`` (InvokeInlineAgent), told apart by the trailing ``/`` (``codec/routing.py``).

An operation a service model defines but no row implements resolves to a row without a handler: the caller is
authenticated and authorised as for any operation, then told that llamarock does not implement it yet.
New capabilities add rows (and services), never a second router.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable
from functools import cache
from typing import Any

from llamarock.codec.rest_json import split_model_path
from llamarock.codec.routing import match_first
from llamarock.codec.service_model import service_model
from llamarock.context import AGENT, AGENT_RUNTIME, BEDROCK, LLAMAROCK, RUNTIME, Operation
from llamarock.routes import (
    agent_runtime,
    converse,
    foundation_models,
    health,
    inference_profiles,
    invocation_logging,
    invoke,
    knowledge_bases,
    metrics,
    provisioned,
    tags,
)
from llamarock.routes import openai as openai_route
from llamarock.routes import quotas as quotas_route
from llamarock.routes import usage as usage_route


def _operation_name(handler: Callable[..., Awaitable[Any]]) -> str:
    """``list_foundation_models`` -> ``ListFoundationModels``: handlers are named after their operations."""
    return "".join(part.capitalize() for part in handler.__name__.split("_"))


def _aws(service: str, handler: Callable[..., Awaitable[Any]], action: str | None = None, **facts: Any) -> Operation:
    name = _operation_name(handler)
    if name not in service_model(service).operation_names:
        raise ValueError(f"{handler.__name__} names no {service} operation ({name})")
    return Operation(service, name, action or f"bedrock:{name}", handler, **facts)


def _own(method: str, path: str, handler: Callable[..., Awaitable[Any]], action: str = "", **facts: Any) -> Operation:
    return Operation(LLAMAROCK, _operation_name(handler), action, handler, route=(method, path), **facts)


ROWS: tuple[Operation, ...] = (
    # bedrock-runtime. Converse is authorised as InvokeModel and ConverseStream as the stream, as on AWS.
    _aws(RUNTIME, invoke.invoke_model, resource="model", invocation=True),
    _aws(RUNTIME, invoke.invoke_model_with_response_stream, resource="model", invocation=True, streaming=True),
    _aws(RUNTIME, converse.converse, "bedrock:InvokeModel", resource="model", invocation=True),
    _aws(RUNTIME, converse.converse_stream, "bedrock:InvokeModelWithResponseStream", resource="model",
         invocation=True, streaming=True),
    _aws(RUNTIME, converse.count_tokens, resource="model"),
    # bedrock (control plane)
    _aws(BEDROCK, foundation_models.list_foundation_models),
    _aws(BEDROCK, foundation_models.get_foundation_model, resource="foundation-model"),
    _aws(BEDROCK, foundation_models.get_foundation_model_availability, resource="foundation-model"),
    _aws(BEDROCK, foundation_models.list_foundation_model_agreement_offers),
    _aws(BEDROCK, foundation_models.create_foundation_model_agreement),
    _aws(BEDROCK, foundation_models.delete_foundation_model_agreement),
    _aws(BEDROCK, foundation_models.get_use_case_for_model_access),
    _aws(BEDROCK, foundation_models.put_use_case_for_model_access),
    _aws(BEDROCK, inference_profiles.create_inference_profile),
    _aws(BEDROCK, inference_profiles.list_inference_profiles),
    _aws(BEDROCK, inference_profiles.get_inference_profile, resource="inference-profile"),
    _aws(BEDROCK, inference_profiles.delete_inference_profile, resource="inference-profile"),
    _aws(BEDROCK, tags.tag_resource, resource="tagged-resource"),
    _aws(BEDROCK, tags.untag_resource, resource="tagged-resource"),
    _aws(BEDROCK, tags.list_tags_for_resource, resource="tagged-resource"),
    _aws(BEDROCK, provisioned.create_provisioned_model_throughput, resource="provisioned-model"),
    _aws(BEDROCK, provisioned.get_provisioned_model_throughput, resource="provisioned-model"),
    _aws(BEDROCK, provisioned.list_provisioned_model_throughputs),
    _aws(BEDROCK, provisioned.update_provisioned_model_throughput, resource="provisioned-model"),
    _aws(BEDROCK, provisioned.delete_provisioned_model_throughput, resource="provisioned-model"),
    _aws(BEDROCK, invocation_logging.put_model_invocation_logging_configuration),
    _aws(BEDROCK, invocation_logging.get_model_invocation_logging_configuration),
    _aws(BEDROCK, invocation_logging.delete_model_invocation_logging_configuration),
    # bedrock-agent: knowledge bases (docs/knowledge-bases.md). Data sources, ingestion jobs and documents are
    # authorised on their knowledge base's ARN; the tagging operations on the ARN in their path.
    _aws(AGENT, knowledge_bases.create_knowledge_base),
    _aws(AGENT, knowledge_bases.list_knowledge_bases),
    *(_aws(AGENT, handler, resource="knowledge-base") for handler in (
        knowledge_bases.get_knowledge_base,
        knowledge_bases.update_knowledge_base,
        knowledge_bases.delete_knowledge_base,
        knowledge_bases.create_data_source,
        knowledge_bases.get_data_source,
        knowledge_bases.list_data_sources,
        knowledge_bases.update_data_source,
        knowledge_bases.delete_data_source,
        knowledge_bases.start_ingestion_job,
        knowledge_bases.get_ingestion_job,
        knowledge_bases.list_ingestion_jobs,
        knowledge_bases.stop_ingestion_job,
        knowledge_bases.ingest_knowledge_base_documents,
        knowledge_bases.delete_knowledge_base_documents,
        knowledge_bases.get_knowledge_base_documents,
        knowledge_bases.list_knowledge_base_documents,
        knowledge_bases.tag_resource,
        knowledge_bases.untag_resource,
        knowledge_bases.list_tags_for_resource,
    )),
    # bedrock-agent-runtime. Retrieve is on the knowledge base; RetrieveAndGenerate names its knowledge base and
    # model in the body, and is authorised as bedrock:RetrieveAndGenerate on * (as in IAM).
    _aws(AGENT_RUNTIME, agent_runtime.retrieve, resource="knowledge-base"),
    _aws(AGENT_RUNTIME, agent_runtime.retrieve_and_generate),
    _aws(AGENT_RUNTIME, agent_runtime.retrieve_and_generate_stream, streaming=True),
    _aws(AGENT_RUNTIME, agent_runtime.rerank),
    # llamarock's own endpoints
    # llamarock's own endpoints. GetQuotas has no IAM action of its own: every caller may see its own quotas (the
    # handler shows everyone's to callers allowed llamarock:GetQuotas).
    _own("GET", "/healthz", health.get_health, public=True),
    _own("GET", "/metrics", metrics.get_metrics, public=True),
    _own("GET", "/llamarock/usage", usage_route.get_usage, "llamarock:GetUsage"),
    _own("GET", "/llamarock/quotas", quotas_route.get_quotas),
    # OpenAI Chat Completions on the runtime endpoint (docs/openai.md). The body names the model; Bedrock
    # authorises a chat completion as InvokeModel, and a streamed one as InvokeModelWithResponseStream.
    _own("GET", "/openai/v1/models", openai_route.list_models, "bedrock:ListFoundationModels", error_shape="openai"),
    _own("POST", "/openai/v1/chat/completions", openai_route.create_chat_completion, "bedrock:InvokeModel",
         resource="model", invocation=True, model_in_body=True, error_shape="openai"),
)


# The services whose botocore URIs the table resolves, in order of precedence (see the module docstring).
SERVICES = (RUNTIME, BEDROCK, AGENT, AGENT_RUNTIME)


@cache
def _model_actions() -> dict[str, str]:
    """Path action -> bedrock-runtime operation, for every ``/model/{modelId}/<action>`` URI of the model."""
    model = service_model(RUNTIME)
    actions = {}
    for name in model.operation_names:
        uri = model.operation_model(name).http["requestUri"].split("?", 1)[0]
        found = re.fullmatch(r"/model/\{modelId\}/([^/{}]+)", uri)
        if found:
            actions[found[1]] = name
    return actions


class OperationTable:
    """The rows, indexed for resolution."""

    def __init__(self, rows: Iterable[Operation] = ROWS) -> None:
        self.rows = tuple(rows)
        self._by_name = {(row.service, row.name): row for row in self.rows}
        self._exact = {row.route: row for row in self.rows if row.route is not None}

    def row(self, service: str, name: str) -> Operation:
        """The row of an operation; an operation without one is known but not implemented."""
        found = self._by_name.get((service, name))
        return found if found is not None else Operation(service, name, f"bedrock:{name}", None)

    def implemented(self, service: str) -> dict[str, Operation]:
        return {row.name: row for row in self.rows if row.service == service and row.handler is not None}

    def resolve(self, method: str, raw_path: bytes) -> tuple[Operation, dict[str, str]] | None:
        """The row a method and raw path name, with the URI labels; None when no operation has that path."""
        path = raw_path.split(b"?", 1)[0].decode("latin-1")
        exact = self._exact.get((method, path))
        if exact is not None:
            return exact, {}
        if path.startswith("/model/"):
            identifier, action = split_model_path(raw_path)
            name = _model_actions().get(action)
            if method != "POST" or name is None or not identifier:
                return None
            return self.row(RUNTIME, name), {"modelId": identifier}
        found = match_first(SERVICES, method, raw_path)
        if found is not None:
            return self.row(found[0], found[1]), found[2]
        return None

    def runtime_actions(self) -> list[str]:
        """The path actions of the implemented ``/model/{modelId}/...`` operations, for error messages."""
        actions = {name: action for action, name in _model_actions().items()}
        return [actions[row.name] for row in self.rows
                if row.service == RUNTIME and row.handler is not None and row.name in actions]
