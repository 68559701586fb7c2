"""The one error tree of llamarock.

Every error a client can see is an AWS error code plus a message. The HTTP status is not stored here: the codec
looks it up in botocore's service model when it renders the error (``fallback_status`` is used only for codes that
no service model defines, such as the front end's authentication errors)::

    LlamarockError                       every error llamarock raises on purpose
    ├── ConfigError                      the settings or deployments cannot be served (start-up, CLI)
    │   └── DeploymentConfigError        a [[deployments]] entry or region map is wrong
    ├── PolicyError                      an IAM policy document is invalid (keys create, key store)
    ├── CliError                         a CLI command cannot do what it was asked; the message says why
    ├── EngineError                      an engine failed; the service layer translates it once
    │   ├── ContextOverflowError         the prompt does not fit the context window
    │   ├── UnsupportedSchemaError       a JSON schema the engine cannot enforce
    │   ├── EmptyPromptError             the prompt has no tokens
    │   ├── EngineNotReadyError          the weights are not loaded yet
    │   ├── ReplicaThrottledError        every replica of a remote deployment answered 429/503 (Retry-After)
    │   └── ReplicaUnavailableError      no replica of a remote deployment is healthy
    └── BedrockError                     (code, message, extra members): what a client sees
    ├── ValidationException              400  bad input: schema, ranges, model id, prompt too long
    ├── SerializationException           400  (front-end, unmodelled): the body is not parseable JSON
    ├── IncompleteSignatureException     400  (front-end, unmodelled): a malformed SigV4 signature
    ├── AccessDeniedException            403  a policy denies the action (or the model is not served)
    ├── UnrecognizedClientException      403  (front-end, unmodelled): unknown access key or bearer token
    ├── InvalidSignatureException        403  (front-end, unmodelled): wrong signature, or the clock is skewed
    ├── MissingAuthenticationTokenException  403  (front-end, unmodelled): the request is not signed
    ├── ResourceNotFoundException        404
    ├── UnknownOperationException        404  (front-end, unmodelled): no such route
    ├── ModelTimeoutException            408
    ├── RequestTimeoutException          408  (front-end, unmodelled): the body did not arrive in time
    ├── ModelErrorException              424  the engine failed while processing
    ├── ModelStreamErrorException        424  the engine failed after the stream started
    ├── ThrottlingException              429
    ├── ModelNotReadyException           429  the deployment is still loading (botocore retries it)
    ├── ServiceQuotaExceededException    400
    ├── ConflictException                400  (bedrock) the resource's state forbids it, e.g. a commitment term
    ├── TooManyTagsException             400  (bedrock) more tags than a resource may carry
    ├── InternalServerException          500  anything unexpected; logged with the request id
    ├── ServiceUnavailableException      503
    └── S3Error                               S3's own codes (NoSuchKey 404, BucketNotEmpty 409, ...), rendered as
                                              S3's XML error on the S3 endpoint's rows (docs/s3.md)

Engines raise :class:`EngineError` (not a BedrockError): the service layer translates it once. The edge
(``routes/edge.py``) renders every BedrockError, and turns any other exception into a logged InternalServerException
with the request id; the CLI prints ConfigError and CliError as one line and exits 2.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LlamarockError(Exception):
    """Root of every error llamarock raises on purpose."""


class ConfigError(LlamarockError):
    """The configuration cannot be served; raised at start-up (before listening) or by a CLI command."""


class DeploymentConfigError(ConfigError):
    """A deployment (or the region map it serves) cannot be served as configured."""


class PolicyError(LlamarockError):
    """An IAM-style policy document is not valid; the message says what is wrong."""


class CliError(LlamarockError):
    """A CLI command cannot do what it was asked; the message says why and what to do."""


class BedrockError(LlamarockError):
    """An error with an AWS error code, rendered by the codec."""

    code: ClassVar[str] = "InternalServerException"
    fallback_status: ClassVar[int] = 500

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON members of the error shape."""
        return {"message": self.message, **self.extra}


class ValidationException(BedrockError):
    code = "ValidationException"
    fallback_status = 400


class SerializationException(BedrockError):
    """The request body is not the JSON the operation expects (unmodelled; AWS's front end sends it)."""

    code = "SerializationException"
    fallback_status = 400


class AccessDeniedException(BedrockError):
    code = "AccessDeniedException"
    fallback_status = 403


class UnrecognizedClientException(BedrockError):
    code = "UnrecognizedClientException"
    fallback_status = 403


class IncompleteSignatureException(BedrockError):
    """The Authorization header or presigned query string is not a well-formed SigV4 signature."""

    code = "IncompleteSignatureException"
    fallback_status = 400


class InvalidSignatureException(BedrockError):
    """The signature does not match, or its timestamp is outside the clock-skew window."""

    code = "InvalidSignatureException"
    fallback_status = 403


class MissingAuthenticationTokenException(BedrockError):
    """The request carries neither a signature nor a bearer token (``--auth enforce`` only)."""

    code = "MissingAuthenticationTokenException"
    fallback_status = 403


class ResourceNotFoundException(BedrockError):
    code = "ResourceNotFoundException"
    fallback_status = 404


class UnknownOperationException(BedrockError):
    code = "UnknownOperationException"
    fallback_status = 404


class ModelTimeoutException(BedrockError):
    code = "ModelTimeoutException"
    fallback_status = 408


class RequestTimeoutException(BedrockError):
    """The client did not send its request body within ``body_read_timeout_s`` (unmodelled; a front-end error)."""

    code = "RequestTimeoutException"
    fallback_status = 408


class ModelErrorException(BedrockError):
    code = "ModelErrorException"
    fallback_status = 424


class ModelStreamErrorException(BedrockError):
    code = "ModelStreamErrorException"
    fallback_status = 424


class ThrottlingException(BedrockError):
    code = "ThrottlingException"
    fallback_status = 429


class ModelNotReadyException(BedrockError):
    code = "ModelNotReadyException"
    fallback_status = 429


class ServiceQuotaExceededException(BedrockError):
    code = "ServiceQuotaExceededException"
    fallback_status = 400


class ConflictException(BedrockError):
    code = "ConflictException"
    fallback_status = 400


class TooManyTagsException(BedrockError):
    code = "TooManyTagsException"
    fallback_status = 400


class InternalServerException(BedrockError):
    code = "InternalServerException"
    fallback_status = 500


class ServiceUnavailableException(BedrockError):
    code = "ServiceUnavailableException"
    fallback_status = 503


class ContentSHA256Mismatch(InvalidSignatureException):
    """The body does not hash to the ``x-amz-content-sha256`` the client signed (S3: XAmzContentSHA256Mismatch)."""


class S3Error(BedrockError):
    """An error of the S3 endpoint, with S3's code and status; ``extra`` members (``Key``, ``BucketName``...) become
    elements of S3's XML error."""

    code = "InternalError"
    fallback_status = 500


def _s3(code: str, status: int, doc: str) -> type[S3Error]:
    return type(code if code != "NotImplemented" else "S3NotImplemented", (S3Error,),
                {"code": code, "fallback_status": status, "__doc__": doc})


NoSuchBucket = _s3("NoSuchBucket", 404, "The bucket does not exist.")
NoSuchKey = _s3("NoSuchKey", 404, "The object does not exist.")
NoSuchUpload = _s3("NoSuchUpload", 404, "The multipart upload does not exist (completed, aborted or never begun).")
BucketAlreadyOwnedByYou = _s3("BucketAlreadyOwnedByYou", 409, "The bucket exists already.")
BucketNotEmpty = _s3("BucketNotEmpty", 409, "A bucket that still holds objects cannot be deleted.")
InvalidBucketName = _s3("InvalidBucketName", 400, "The bucket name breaks S3's naming rules.")
InvalidRange = _s3("InvalidRange", 416, "The Range asks for no byte the object has.")
InvalidPart = _s3("InvalidPart", 400, "A part of CompleteMultipartUpload was not uploaded, or its ETag differs.")
InvalidPartOrder = _s3("InvalidPartOrder", 400, "CompleteMultipartUpload's parts are not in ascending order.")
EntityTooSmall = _s3("EntityTooSmall", 400, "A part other than the last is smaller than 5 MiB.")
EntityTooLarge = _s3("EntityTooLarge", 400, "The body is larger than S3 takes in one request (5 GiB).")
BadDigest = _s3("BadDigest", 400, "The Content-MD5 or x-amz-checksum-* does not match the body.")
InvalidDigest = _s3("InvalidDigest", 400, "The Content-MD5 or x-amz-checksum-* is not a valid digest.")
IncompleteBody = _s3("IncompleteBody", 400, "The body ended before the length it declared.")
InvalidArgument = _s3("InvalidArgument", 400, "A parameter's value is invalid.")
InvalidRequest = _s3("InvalidRequest", 400, "The request is not one S3 accepts (e.g. copying an object onto itself).")
MalformedXML = _s3("MalformedXML", 400, "The XML body is not well formed or not the operation's shape.")
KeyTooLongError = _s3("KeyTooLongError", 400, "The key is longer than 1024 bytes.")
PreconditionFailed = _s3("PreconditionFailed", 412, "An If-Match or If-Unmodified-Since condition does not hold.")
MethodNotAllowed = _s3("MethodNotAllowed", 405, "The method is not allowed against this resource.")
S3NotImplemented = _s3("NotImplemented", 501, "The S3 endpoint does not implement this operation or header.")


class EngineError(LlamarockError):
    """Raised by an engine when generation fails; translated to a BedrockError by the service layer."""


class ContextOverflowError(EngineError):
    """The prompt does not fit in the engine's context window."""

    def __init__(self, prompt_tokens: int, context_length: int) -> None:
        super().__init__(f"prompt of {prompt_tokens} tokens does not fit a context of {context_length} tokens")
        self.prompt_tokens = prompt_tokens
        self.context_length = context_length


class EmptyPromptError(EngineError):
    """The prompt tokenizes to no tokens at all (an empty raw prompt, on weights that add no BOS token): there is
    nothing to decode, so it is refused before it reaches the decode loop."""

    def __init__(self) -> None:
        super().__init__("the prompt has no tokens, so there is nothing to generate from")


class UnsupportedSchemaError(EngineError):
    """The engine cannot constrain its output to the requested JSON schema."""


class EngineNotReadyError(EngineError):
    """The engine has not finished loading its weights."""


class ReplicaThrottledError(EngineError):
    """Every replica of a remote deployment that could take the request answered 429 or 503 (or is still inside the
    Retry-After it asked for); the service layer sends ThrottlingException (429) or ServiceUnavailableException."""

    def __init__(self, message: str, *, retry_after_s: float, status: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
        self.status = status


class ReplicaUnavailableError(EngineError):
    """No replica of a remote deployment is healthy (all down, ejected or with an open circuit breaker)."""
