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
4. S3 (docs/s3.md): a request whose SigV4 credential scope names service ``s3`` is matched against botocore's
   ``s3`` model only (its query string and headers tell operations on one URI apart: ``codec/routing.py``), and so is
   a request with no credential at all that nothing above matched, unless its first path segment is one a Bedrock
   URI (or llamarock's own) starts with (``/model/``, ``/foundation-models``, ``/knowledgebases``...). A ``Host`` of
   ``<bucket>.<one of s3_virtual_hosts>`` (virtual-hosted style) puts the bucket in front of the path.

An operation a service model defines but no row implements resolves to a row without a handler: the caller is
authenticated and authorised as for any operation, then told that llamarock does not implement it yet.
New capabilities add rows (and services), never a second router.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import cache
from typing import Any

from llamarock.codec.rest_json import split_model_path
from llamarock.codec.routing import match, match_first
from llamarock.codec.service_model import service_model
from llamarock.context import AGENT, AGENT_RUNTIME, BEDROCK, LLAMAROCK, RUNTIME, S3, Operation
from llamarock.routes import (
    agent_runtime,
    batch,
    converse,
    custom_models,
    customization,
    foundation_models,
    guardrail_runtime,
    guardrails,
    health,
    inference_profiles,
    invocation_logging,
    invoke,
    knowledge_bases,
    metrics,
    model_import,
    provisioned,
    s3,
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


def _s3(handler: Callable[..., Awaitable[Any]], action: str, resource: str = "s3-bucket", **facts: Any) -> Operation:
    """An S3 row: its errors are S3's XML, its action one of IAM's ``s3:*`` (AWS's names: HeadBucket and the
    listings are ``s3:ListBucket``, HeadObject is ``s3:GetObject``, the multipart steps are ``s3:PutObject``)."""
    operation = _aws(S3, handler, action or "-", resource=resource, error_shape="s3", **facts)
    return dataclasses.replace(operation, action=action)


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
    _aws(RUNTIME, guardrail_runtime.apply_guardrail, resource="guardrail"),  # on the guardrail ARN, as in IAM
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
    # Guardrails (docs/guardrails.md): authorised on the guardrail's ARN, as in IAM, except CreateGuardrail and
    # ListGuardrails.
    _aws(BEDROCK, guardrails.create_guardrail),
    _aws(BEDROCK, guardrails.list_guardrails),
    *(_aws(BEDROCK, handler, resource="guardrail") for handler in (
        guardrails.get_guardrail,
        guardrails.update_guardrail,
        guardrails.delete_guardrail,
        guardrails.create_guardrail_version,
    )),
    # Batch inference (docs/batch.md): Create is on model-invocation-job/*, Get and Stop on the job's ARN.
    _aws(BEDROCK, batch.create_model_invocation_job, resource="model-invocation-job"),
    _aws(BEDROCK, batch.get_model_invocation_job, resource="model-invocation-job"),
    _aws(BEDROCK, batch.list_model_invocation_jobs),
    _aws(BEDROCK, batch.stop_model_invocation_job, resource="model-invocation-job"),
    # Custom Model Import (docs/model-import.md): Create is on model-import-job/*, the imported models on their ARN.
    _aws(BEDROCK, model_import.create_model_import_job, resource="model-import-job"),
    _aws(BEDROCK, model_import.get_model_import_job, resource="model-import-job"),
    _aws(BEDROCK, model_import.list_model_import_jobs),
    _aws(BEDROCK, model_import.get_imported_model, resource="imported-model"),
    _aws(BEDROCK, model_import.list_imported_models),
    _aws(BEDROCK, model_import.delete_imported_model, resource="imported-model"),
    # Model customization (docs/customization.md): fine-tuning jobs, and the custom models they make. Get, Stop and
    # the custom-model operations are on the ARN when the request names one (``*`` otherwise, as for Create and List).
    _aws(BEDROCK, customization.create_model_customization_job, resource="model-customization-job"),
    _aws(BEDROCK, customization.get_model_customization_job, resource="model-customization-job"),
    _aws(BEDROCK, customization.list_model_customization_jobs),
    _aws(BEDROCK, customization.stop_model_customization_job, resource="model-customization-job"),
    _aws(BEDROCK, customization.list_custom_models),
    _aws(BEDROCK, customization.get_custom_model, resource="custom-model"),
    _aws(BEDROCK, customization.delete_custom_model, resource="custom-model"),
    # Custom models served as LoRA adapters (CreateCustomModel from the blob store) and their on-demand deployments.
    _aws(BEDROCK, custom_models.create_custom_model),
    _aws(BEDROCK, custom_models.create_custom_model_deployment),
    _aws(BEDROCK, custom_models.get_custom_model_deployment),
    _aws(BEDROCK, custom_models.list_custom_model_deployments),
    _aws(BEDROCK, custom_models.update_custom_model_deployment),
    _aws(BEDROCK, custom_models.delete_custom_model_deployment),
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
    # S3 on the local blob store (docs/s3.md). DeleteObjects has no action of its own: as on AWS, each of its keys
    # is authorised as s3:DeleteObject by the handler. CopyObject also needs s3:GetObject on its source.
    _s3(s3.list_buckets, "s3:ListAllMyBuckets", resource="*"),
    _s3(s3.create_bucket, "s3:CreateBucket"),
    _s3(s3.head_bucket, "s3:ListBucket"),
    _s3(s3.delete_bucket, "s3:DeleteBucket"),
    _s3(s3.get_bucket_location, "s3:GetBucketLocation"),
    _s3(s3.list_objects, "s3:ListBucket"),
    _s3(s3.list_objects_v2, "s3:ListBucket"),
    _s3(s3.put_object, "s3:PutObject", "s3-object", streams_body=True),
    _s3(s3.get_object, "s3:GetObject", "s3-object"),
    _s3(s3.head_object, "s3:GetObject", "s3-object"),
    _s3(s3.delete_object, "s3:DeleteObject", "s3-object"),
    _s3(s3.delete_objects, ""),
    _s3(s3.copy_object, "s3:PutObject", "s3-object"),
    _s3(s3.create_multipart_upload, "s3:PutObject", "s3-object"),
    _s3(s3.upload_part, "s3:PutObject", "s3-object", streams_body=True),
    _s3(s3.complete_multipart_upload, "s3:PutObject", "s3-object"),
    _s3(s3.abort_multipart_upload, "s3:AbortMultipartUpload", "s3-object"),
    _s3(s3.list_parts, "s3:ListMultipartUploadParts", "s3-object"),
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
# What a request signed for S3 that names no S3 operation resolves to (it is authenticated, then refused).
S3_UNMATCHED = Operation(S3, "MethodNotAllowed", "", s3.method_not_allowed, error_shape="s3")


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


@cache
def _bedrock_segments(own_paths: tuple[str, ...]) -> frozenset[str]:
    """The first path segments of every Bedrock URI the table resolves, and of llamarock's own paths."""
    segments = {"model", *(path.strip("/").split("/", 1)[0] for path in own_paths)}
    for service in SERVICES:
        model = service_model(service)
        for name in model.operation_names:
            first = model.operation_model(name).http["requestUri"].split("?", 1)[0].strip("/").split("/", 1)[0]
            if first and not first.startswith("{"):
                segments.add(first)
    return frozenset(segments)


class OperationTable:
    """The rows, indexed for resolution."""

    def __init__(self, rows: Iterable[Operation] = ROWS, s3_hosts: Iterable[str] = ("localhost",)) -> None:
        self.rows = tuple(rows)
        self.s3_hosts = tuple(host.lower().strip(".") for host in s3_hosts if host.strip("."))
        self._by_name = {(row.service, row.name): row for row in self.rows}
        self._exact = {row.route: row for row in self.rows if row.route is not None}

    def row(self, service: str, name: str) -> Operation:
        """The row of an operation; an operation without one is known but not implemented."""
        found = self._by_name.get((service, name))
        if found is not None:
            return found
        if service == S3:
            return Operation(service, name, f"s3:{name}", None, error_shape="s3")
        return Operation(service, name, f"bedrock:{name}", None)

    def implemented(self, service: str) -> dict[str, Operation]:
        return {row.name: row for row in self.rows if row.service == service and row.handler is not None}

    def resolve(self, method: str, raw_path: bytes, query: bytes = b"", headers: Sequence[tuple[bytes, bytes]] = (),
                signing_service: str | None = "") -> tuple[Operation, dict[str, str]] | None:
        """The row a request names, with the URI labels; None when no operation has that path. ``signing_service``
        is the service of the request's SigV4 credential scope (None: no credential at all); see the module
        docstring for how S3 requests are told apart."""
        if signing_service == S3:
            return self._s3_signed(method, raw_path, query, headers)
        found = self._bedrock(method, raw_path)
        if found is None and signing_service is None and not self._bedrock_path(raw_path):
            return self._s3(method, raw_path, query, headers)
        return found

    def _bedrock_path(self, raw_path: bytes) -> bool:
        """Whether a path starts with a segment only Bedrock's URIs (or llamarock's own) start with: an unsigned
        request there that names no operation is a bad Bedrock request, not an S3 one (a bucket of that name is
        reached with a request signed for s3)."""
        first = raw_path.split(b"?", 1)[0].lstrip(b"/").split(b"/", 1)[0]
        return first.decode("latin-1") in _bedrock_segments(tuple(row.route[1] for row in self.rows if row.route))

    def _s3(self, method: str, raw_path: bytes, query: bytes,
            headers: Sequence[tuple[bytes, bytes]]) -> tuple[Operation, dict[str, str]] | None:
        host = next((value.decode("latin-1") for name, value in headers if name.lower() == b"host"), "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        name = name.lower().rstrip(".")
        path = raw_path.split(b"?", 1)[0]
        for base in self.s3_hosts:
            if name.endswith("." + base) and len(name) > len(base) + 1:
                bucket = name[: -len(base) - 1].encode()
                path = b"/" + bucket + (path if path != b"/" else b"")
                break
        found = match(S3, method, path, query, headers)
        if found is not None:
            return self.row(S3, found[0]), found[1]
        return None

    def _s3_signed(self, method: str, raw_path: bytes, query: bytes,
                   headers: Sequence[tuple[bytes, bytes]]) -> tuple[Operation, dict[str, str]]:
        """A request signed for S3 always gets an S3 answer: MethodNotAllowed where no S3 operation matches."""
        found = self._s3(method, raw_path, query, headers)
        if found is not None:
            return found
        return S3_UNMATCHED, {}

    def _bedrock(self, method: str, raw_path: bytes) -> tuple[Operation, dict[str, str]] | None:
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
