"""One request's context: the operation it names, its id, its body, its model and its caller, resolved once.

The edge (``routes/edge.py``) builds a :class:`RequestContext` for every HTTP request before anything else runs:
it mints the request id, resolves the method and raw path against the operation table (``routes/operations.py``),
reads and size-checks the body and parses the model identifier. The context rides on the ASGI scope's state
(``request.state.context``); auth fills in the caller and its quota reservation, handlers and observers read it.
Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from llamarock.bedrock.model_ids import RESOURCE_KINDS, ModelRef, parse_model_ref
from llamarock.errors import ValidationException

# The services of the operation table: botocore's service names, and llamarock's own endpoints.
RUNTIME = "bedrock-runtime"
BEDROCK = "bedrock"
AGENT = "bedrock-agent"  # knowledge bases, data sources, ingestion jobs (the build-time API)
AGENT_RUNTIME = "bedrock-agent-runtime"  # Retrieve, RetrieveAndGenerate(+Stream), Rerank
LLAMAROCK = "llamarock"
S3 = "s3"  # the S3 endpoint of the local blob store (docs/s3.md)

# The IAM action of an invocation that streams its answer (ConverseStream, a streamed OpenAI chat completion).
STREAM_ACTION = "bedrock:InvokeModelWithResponseStream"


@dataclass(frozen=True)
class Operation:
    """One row of the operation table: everything the server knows about an operation, in one place.

    ``handler`` is None for an operation the service model defines but llamarock does not implement yet (the
    request gets an error that says so). ``resource`` says what IAM resource the action is on: ``model`` (the
    model ARNs the identifier in the path stands for; such calls also count against the caller's quotas), the ARN
    of the foundation model, inference profile or provisioned model the URI label names, the resource ARN the body's
    ``resourceARN`` names (``tagged-resource``: TagResource, UntagResource, ListTagsForResource), the knowledge base
    the ``knowledgeBaseId`` label names (``knowledge-base``: ``arn:aws:bedrock:<region>:<account>:knowledge-base/<id>``;
    a ``resourceArn`` label is taken as it is), the guardrail the ``guardrailIdentifier`` label names (``guardrail``:
    its ARN, or ``arn:aws:bedrock:<region>:<account>:guardrail/<id>``), or ``*``.
    ``invocation`` operations (InvokeModel, Converse and their streams) reserve tokens of the caller's tokens per
    minute and produce one invocation record each. ``public`` operations (health, metrics) skip authentication.
    ``route`` is the method and exact path of an operation that no botocore service model describes.
    ``model_in_body`` operations (OpenAI Chat Completions) name their model in the JSON body's ``model`` member
    rather than the path, and stream when its ``stream`` member is true: the edge then authorises and records the
    call as streaming (:meth:`streamed`). ``error_shape`` is how the edge renders their errors: AWS's JSON error,
    OpenAI's ``{"error": {...}}`` (``openai``), or S3's XML ``<Error>`` (``s3``). S3 rows are on the bucket
    (``s3-bucket``: ``arn:aws:s3:::bucket``) or object (``s3-object``: ``arn:aws:s3:::bucket/key``) their URI labels
    name. ``streams_body`` rows (S3's PutObject, UploadPart) are not read whole by the edge: their handler streams
    the body to disk and checks it against what was signed, under S3's own size limit instead of the edge's.
    """

    service: str
    name: str
    action: str
    handler: Callable[..., Awaitable[Any]] | None
    resource: Literal[
        "model", "foundation-model", "inference-profile", "provisioned-model", "tagged-resource", "knowledge-base",
        "guardrail", "s3-bucket", "s3-object", "model-invocation-job", "*"
    ] = "*"
    streaming: bool = False
    invocation: bool = False
    public: bool = False
    route: tuple[str, str] | None = None
    model_in_body: bool = False
    error_shape: Literal["aws", "openai", "s3"] = "aws"
    streams_body: bool = False

    def streamed(self) -> Operation:
        """This operation as a call whose body asked for a stream: authorised and recorded as streaming."""
        return dataclasses.replace(self, action=STREAM_ACTION, streaming=True)


def body_model(body: bytes) -> tuple[str, bool]:
    """The ``model`` and ``stream`` members of a JSON body (``""`` and False where it has none), for
    ``model_in_body`` operations; a body that is not a JSON object names no model (its handler says why)."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return "", False
    if not isinstance(document, dict):
        return "", False
    model = document.get("model")
    return model if isinstance(model, str) else "", document.get("stream") is True


@dataclass(frozen=True)
class ModelName:
    """The model identifier of a request, parsed once: as sent, as parsed (aliases applied), or why it is invalid.

    ``model_id`` is the catalog id the identifier names (aliases applied; the identifier itself when it cannot be
    parsed, and the ARN itself for a provisioned-model ARN, whose model is the provisioning store's): what quotas,
    the audit log and a throttled call's record count the call under. An application inference profile's ARN counts
    as itself too (which model it routes to is the profile store's).
    """

    identifier: str
    ref: ModelRef | None
    error: ValidationException | None
    model_id: str

    @classmethod
    def parse(cls, identifier: str, aliases: dict[str, str], account: str | None = None) -> ModelName:
        """Parse once; an ARN of an inference profile or provisioned model of another account than ``account``
        (the server's) is as invalid as a malformed one, so no policy is ever checked against a made-up ARN."""
        try:
            ref = parse_model_ref(aliases.get(identifier, identifier))
        except ValidationException as error:
            return cls(identifier, None, error, identifier)
        if account is not None and ref.account is not None and ref.account != account:
            foreign = ValidationException(
                f"The provided model identifier is invalid. The ARN {ref.requested} names account {ref.account}; "
                f"this server answers as account {account}."
            )
            return cls(identifier, None, foreign, identifier)
        if ref.kind in RESOURCE_KINDS:
            return cls(identifier, ref, None, ref.requested)
        return cls(identifier, ref, None, aliases.get(ref.model_id, ref.model_id))

    def parsed(self) -> ModelRef:
        """The parsed identifier; raises Bedrock's ValidationException when it is not a valid one."""
        if self.ref is None:
            raise self.error or ValidationException("The provided model identifier is invalid.")
        return self.ref


class Settlement(Protocol):
    """Something held for a request that is settled once with the tokens it really used (a quota reservation)."""

    def settle(self, used_tokens: int) -> None: ...


@dataclass
class RequestContext:
    """What one request is, for every layer that handles it.

    Set by the edge: ``request_id``, ``started``, ``operation`` (None while the path names none), ``labels`` (the
    URI labels), ``body`` and ``model``. Set by auth: ``principal_arn``, ``principal_name``, ``region`` (the region
    the request was signed for, else the server's), ``access_key_id``, ``auth_type``, ``decision``, ``resource``
    and ``quota``. ``input_tokens``/``output_tokens`` are what the invocation's record counted, for the audit line.
    """

    method: str
    path: str
    raw_path: bytes
    query: bytes
    region: str
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    started: float = field(default_factory=time.monotonic)
    operation: Operation | None = None
    labels: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    model: ModelName | None = None
    principal_arn: str | None = None
    principal_name: str | None = None
    access_key_id: str | None = None
    auth_type: str | None = None
    decision: str | None = None
    resource: str | None = None
    quota: Settlement | None = None
    error_code: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    # Anything the caller's identity carries that handlers need (the auth layer's Principal, with its policy), and
    # the IAM condition context its policy was evaluated with.
    principal: Any = None
    policy_context: dict[str, str] | None = None
    # A streamed S3 body's chunk-signature material (auth's StreamSigning), when the request was signed.
    signing: Any = None

    @property
    def operation_name(self) -> str | None:
        return self.operation.name if self.operation is not None else None

    def elapsed_ms(self) -> int:
        return int((time.monotonic() - self.started) * 1000)
