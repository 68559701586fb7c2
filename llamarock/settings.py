"""The one settings tree.

Values come, highest priority first, from CLI flags, ``LLAMAROCK_*`` environment variables (nested fields with
``__``, e.g. ``LLAMAROCK_LOG_LEVEL``), the TOML config file (``--config`` / ``LLAMAROCK_CONFIG``) and the defaults
below. Every field carries a description; ``docs/configuration.md`` is generated from them.
"""

from __future__ import annotations

import os
from contextvars import ContextVar
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

EngineName = Literal["llamacpp", "fake", "transformers", "openai", "llama-server"]
ServiceTierName = Literal["priority", "default", "flex", "reserved"]
# Bedrock's published per-token price ratios of its service tiers to the standard (default) tier.
DEFAULT_TIER_PRICE_MULTIPLIERS: dict[ServiceTierName, Decimal] = {
    "priority": Decimal("1.75"), "default": Decimal(1), "flex": Decimal("0.5"), "reserved": Decimal(1),
}
_REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-\d+$"
RegionName = Annotated[str, StringConstraints(pattern=_REGION_PATTERN)]
ServerUrl = Annotated[str, StringConstraints(pattern=r"^https?://[^\s/?#]+(/[^\s?#]*)?$")]

_CONFIG_FILE: ContextVar[Path | None] = ContextVar("llamarock_config_file", default=None)


def default_data_dir() -> Path:
    """Per-user data directory: ``$XDG_DATA_HOME/llamarock``, else ``~/.local/share/llamarock``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llamarock"


class RemoteEndpointSettings(BaseModel):
    """One replica of a remote deployment, when it needs its own API key or routing weight."""

    model_config = ConfigDict(extra="forbid")

    url: ServerUrl = Field(description="Base URL of the replica, before /v1 or /completion (http://host:port).")
    api_key: str | None = Field(default=None, description="Bearer token for this replica; empty means the "
                                "deployment's `api_key`.")
    weight: float = Field(default=1.0, gt=0, le=100,
                          description="Share of the traffic relative to the other replicas (affinity ring and load "
                          "bound scale with it).")


class RouterSettings(BaseModel):
    """How a remote deployment routes over its replicas (engines/router.py; docs/scale-out.md)."""

    model_config = ConfigDict(extra="forbid")

    affinity_prefix_tokens: int = Field(
        default=64, ge=0, le=100_000,
        description="Leading prompt tokens hashed for prefix affinity (requests sharing them go to the same replica, "
        "whose prefix cache holds them); 0 routes round-robin.")
    load_factor: float = Field(
        default=1.25, ge=1.0, le=10.0,
        description="Bounded load of prefix affinity: a replica takes a request while its in-flight count is under "
        "load_factor × (requests in flight + 1) / replicas, so one hot prefix cannot pin one replica.")
    replica_slots: int | None = Field(
        default=None, ge=1, le=4096,
        description="Requests one replica runs at once (vLLM's --max-num-seqs, llama-server's -np): prefix affinity "
        "keeps a prefix on its replica while it has that many or fewer in flight, whatever the load bound; empty "
        "means llama-server's probed slots, else 8.")
    max_attempts: int = Field(
        default=4, ge=1, le=32,
        description="Attempts per request over the replicas: retries before the first token, resumptions after it.")
    health_interval_s: float = Field(default=2.0, gt=0, description="Seconds between active health checks.")
    health_timeout_s: float = Field(default=2.0, gt=0, description="Seconds a health check may take.")
    stall_timeout_s: float = Field(
        default=30.0, gt=0,
        description="Seconds without a chunk before an attempt counts as stalled and the stream resumes elsewhere "
        "(include the replica's time to first token for long prompts).")
    connect_timeout_s: float = Field(default=5.0, gt=0, description="Seconds to connect to a replica.")
    breaker_failures: int = Field(
        default=3, ge=1, description="Failures in a row that open a replica's circuit breaker.")
    breaker_open_s: float = Field(
        default=5.0, gt=0, description="Seconds an opened breaker keeps a replica out (doubling while it keeps "
        "failing, up to breaker_max_open_s).")
    breaker_max_open_s: float = Field(default=60.0, gt=0, description="Longest a breaker stays open.")
    eject_s: float = Field(
        default=5.0, gt=0, description="Seconds a replica whose connection was refused or reset stays ejected "
        "before a health check may readmit it.")
    load_timeout_s: float = Field(
        default=60.0, gt=0, description="Seconds the deployment waits at start-up for a first replica to answer.")


class DeploymentSettings(BaseModel):
    """One ``[[deployments]]`` entry: which model ids an engine serves, and with which weights."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique name of the deployment; sent back in the x-llamarock-served-by header.")
    models: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Catalog model ids this deployment serves; shell-style patterns allowed ('*' = every id "
        "not claimed by an earlier deployment).",
    )
    engine: EngineName | None = Field(
        default=None, description="Engine that runs this deployment; empty means the top-level `engine` setting."
    )
    model_path: Path | None = Field(
        default=None,
        description="Path of a GGUF file for the llamacpp engine (empty means the embedded SmolLM2-135M-Instruct); "
        "for the transformers engine, a Hugging Face model folder (required; `llamarock models make-tiny` builds one).",
    )
    context_length: int | None = Field(
        default=None, ge=64, description="Context window in tokens; empty means min(model's trained context, 8192)."
    )
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads for this deployment; empty means the top-level `threads`."
    )
    chat_format: str = Field(
        default="auto",
        description="Chat format of the weights: 'auto' (from the GGUF chat template), 'llama3', 'llama2' or "
        "'other'. Llama-formatted prompts pass through unchanged only when it matches the prompt's format.",
    )
    kv_cells: int | None = Field(
        default=None, ge=64,
        description="llama.cpp KV cache size in tokens, shared by all running requests of this deployment; empty "
        "means the context window. Admission reserves prompt + max tokens per request from it.",
    )
    max_parallel: int = Field(
        default=8, ge=1, le=128, description="Requests decoded together in each step (continuous batching)."
    )
    max_queue: int = Field(
        default=64, ge=0, description="Requests that may wait for a slot; beyond it callers get ThrottlingException."
    )
    queue_timeout_s: float = Field(
        default=120.0, gt=0, description="Seconds a request may wait for a slot before ModelTimeoutException."
    )
    prefill_chunk: int = Field(
        default=256, ge=16, le=512,
        description="Prompt tokens prefilled per step while other requests are decoding, so that a long prompt "
        "never stalls running streams for more than one step.",
    )
    priority_slots: int = Field(
        default=1, ge=0, le=32,
        description="Extra decode slots only prioritised requests (latency-optimized, the priority and reserved "
        "service tiers, provisioned throughput) may use, so that they start at once even when standard requests fill "
        "all `max_parallel` slots.",
    )
    flex_aging_s: float = Field(
        default=10.0, ge=0,
        description="Seconds a flex-tier request waits behind default-tier ones at most: after that it competes with "
        "them in arrival order, so flex traffic is never starved. Keep it below `queue_timeout_s`.",
    )
    prefix_cache_tokens: int | None = Field(
        default=None, ge=0,
        description="Tokens of finished requests' KV kept in host memory for prefix reuse (prompt caching; cached "
        "prefixes leave the KV cache when the deployment is idle or needs the room); empty means half as many as the "
        "KV cache has cells, 0 keeps no finished request (running ones still share prefixes).",
    )
    fake_reply: str | None = Field(
        default=None,
        description="Fake engine only: the reply to generate; '{prompt}' is replaced by the last user message. "
        "Empty means a deterministic sentence that quotes the prompt.",
    )
    fake_fail_after: int | None = Field(
        default=None, ge=0, description="Fake engine only: fail with an engine error after this many tokens."
    )
    fake_token_delay_ms: int = Field(default=0, ge=0, description="Fake engine only: delay before each token.")
    # Vision (docs/vision.md): the transformers engine's device and dtype, and llama.cpp's multimodal projector.
    device: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="transformers engine only: 'auto' (CUDA when torch sees a GPU, else the CPU), 'cpu', 'cuda' or "
        "'cuda:N'.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="transformers engine only: weights' dtype; 'auto' is bfloat16 on CUDA and float32 on the CPU.",
    )
    mmproj_path: Path | None = Field(
        default=None,
        description="llamacpp engine only: a GGUF multimodal projector (mmproj) for a vision GGUF at `model_path`; "
        "not supported yet (the deployment fails to load with an error saying so).",
    )
    # Remote engines (engine = "openai" or "llama-server"): replicas of an inference server; docs/scale-out.md.
    endpoints: list[ServerUrl | RemoteEndpointSettings] = Field(
        default_factory=list,
        description="openai and llama-server engines: the replicas, each a base URL ('http://host:port') or a table "
        "{url, api_key, weight}; requests are routed over them (prefix affinity, health checks, failover that resumes "
        "streams).")
    api_key: str | None = Field(
        default=None, description="openai and llama-server engines: bearer token sent to every replica without its "
        "own.")
    remote_model: str | None = Field(
        default=None, description="openai engine: the model name the replicas serve (the request's `model`); empty "
        "means the first of their /v1/models.")
    supports_images: bool | None = Field(
        default=None, description="openai engine: whether the served model takes images (sent as data URLs in chat "
        "messages); empty means as the replicas report it.")
    router: RouterSettings = Field(
        default_factory=RouterSettings, description="openai and llama-server engines: routing over the replicas.")


EmbeddingEngineName = Literal["onnx", "llamacpp", "remote"]


class EmbeddingDeploymentSettings(BaseModel):
    """One ``[[embedding_deployments]]`` entry: which embedding model ids (Titan, Cohere) an embedder serves."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Unique name of the embedding deployment; sent back in x-llamarock-served-by.")
    models: list[str] = Field(
        default_factory=lambda: ["*"],
        description="Embedding model ids of the catalog this deployment serves; shell-style patterns allowed ('*' = "
        "every embedding model id not claimed by an earlier embedding deployment).",
    )
    engine: EmbeddingEngineName = Field(
        default="onnx",
        description="'onnx': the embedded all-MiniLM-L6-v2 on onnxruntime (or `model_path`, a sentence-transformers "
        "BERT zip of the same layout); 'llamacpp': a GGUF embedding model at `model_path`; 'remote': an "
        "OpenAI-compatible embeddings endpoint at `url`.",
    )
    model_path: Path | None = Field(
        default=None,
        description="onnx: a sentence-transformers model zip (model.safetensors, tokenizer.json, config.json), empty "
        "means the embedded all-MiniLM-L6-v2; llamacpp: the GGUF file (required).",
    )
    url: ServerUrl | None = Field(
        default=None,
        description="remote: base URL of the OpenAI-compatible API, the part before /embeddings (e.g. "
        "http://127.0.0.1:8000/v1).",
    )
    remote_model: str | None = Field(
        default=None, description="remote: the `model` sent to the endpoint; empty means the deployment's name."
    )
    api_key: str | None = Field(
        default=None, description="remote: bearer token for the endpoint (sent as Authorization: Bearer ...)."
    )
    dimensions: list[int] = Field(
        default_factory=list,
        description="remote: the vector sizes the remote model gives, its default first (required for remote); "
        "other engines report their own.",
    )
    max_tokens: int | None = Field(
        default=None, ge=8,
        description="Input tokens per text; longer texts are truncated (or refused, per the request's body). Empty "
        "means 256 for onnx (the model's sentence-transformers limit), 512 for llamacpp, 8192 for remote.",
    )
    pooling: Literal["model", "mean", "cls", "last"] = Field(
        default="model",
        description="llamacpp: how token vectors become one vector; 'model' uses the GGUF's own pooling.",
    )
    threads: int | None = Field(
        default=None, ge=1, description="CPU threads (onnx, llamacpp); empty means the top-level `threads`."
    )
    max_batch: int = Field(default=32, ge=1, le=1024, description="Texts embedded together in one model run.")
    quantize: Literal["int8", "none"] = Field(
        default="int8",
        description="onnx: 'int8' runs the matrix products in int8 (quantized once at load and cached: about 1.6x "
        "faster on CPU, vectors at cosine 0.99 from fp32); 'none' keeps fp32 (bench/embed_speed.py).",
    )
    max_queue: int = Field(
        default=64, ge=1,
        description="Embedding requests that may run or wait at once; beyond it callers get ThrottlingException.",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="remote: seconds to wait for the endpoint's answer.")
    preload: bool = Field(
        default=False,
        description="Load the weights at start-up; by default they load on the first request (about 2 s for the "
        "embedded model), so servers that never embed pay nothing.",
    )

    @model_validator(mode="after")
    def _engine_needs(self) -> EmbeddingDeploymentSettings:
        if self.engine == "llamacpp" and self.model_path is None:
            raise ValueError(f"embedding deployment {self.name!r}: engine llamacpp needs model_path (a GGUF file)")
        if self.engine == "remote" and (self.url is None or not self.dimensions):
            raise ValueError(
                f"embedding deployment {self.name!r}: engine remote needs url and dimensions (the sizes its model "
                "gives, the default first)"
            )
        return self


class PriceSettings(BaseModel):
    """One ``[prices."<model-id>"]`` entry: the price of a model the catalog has none for (or a different one)."""

    model_config = ConfigDict(extra="forbid")

    input: Decimal = Field(ge=0, description="On-demand price in USD per one million input tokens.")
    output: Decimal = Field(ge=0, description="On-demand price in USD per one million output tokens.")
    provisioned_hourly: Decimal | None = Field(
        default=None, ge=0, description="Provisioned Throughput price in USD per model unit per hour; empty means "
        "the catalog's, if any.",
    )


class Settings(BaseSettings):
    """Everything `llamarock serve` and the CLI can be told."""

    model_config = SettingsConfigDict(env_prefix="LLAMAROCK_", env_nested_delimiter="__", extra="forbid")

    host: str = Field(default="127.0.0.1", description="Address the server listens on.")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port the server listens on (0 = any free port).")
    region: str = Field(
        default="us-west-2", pattern=_REGION_PATTERN,
        description="AWS region of requests that carry none (unsigned or bearer-token requests); a SigV4 request's "
        "region is the one it was signed for. Defaults to the first of `regions` when only those are given.",
    )
    regions: list[RegionName] = Field(
        default_factory=list,
        description="Regions this server answers for (`serve --regions us-west-2,us-east-1`); a request signed for "
        "another gets InvalidSignatureException \"Credential should be scoped to a valid region\". Empty means "
        "every region.",
    )
    model_regions: dict[str, list[RegionName]] = Field(
        default_factory=dict,
        description="Per catalog model id, the regions that offer it, replacing the catalog's (docs/regions.md), "
        "e.g. `model_regions = {\"meta.llama3-1-8b-instruct-v1:0\" = [\"us-west-2\", \"us-east-1\"]}`. The "
        "model is on demand in all of them unless `on_demand_regions` names it too.",
    )
    enforce_end_of_life: bool = Field(
        default=False,
        description="Refuse, as Bedrock does, models past their end of life on Bedrock (the Llama 2 ids): "
        "ResourceNotFoundException \"This model version has reached the end of its life\", and leave them out of "
        "ListFoundationModels. Off by default: a deployment here keeps serving the ids its operator mapped to it; "
        "GetFoundationModel and ListFoundationModels still show their LEGACY status and endOfLifeTime.",
    )
    on_demand_regions: dict[str, list[RegionName]] = Field(
        default_factory=dict,
        description="Per catalog model id, the regions where its own id or foundation-model ARN may be invoked "
        "(elsewhere only through an inference profile), replacing the catalog's; [] makes it profile-only.",
    )
    region_servers: dict[RegionName, ServerUrl] = Field(
        default_factory=dict,
        description="Other llamarock servers, by the region they serve: `region_servers = {\"us-east-2\" = "
        "\"http://10.0.0.5:8080\"}`. A runtime request whose inference region (docs/regions.md) is named here is "
        "forwarded to that server and its answer streamed back, even when a deployment here could serve it; a "
        "request that a peer forwarded (header x-llamarock-forwarded) is never forwarded again.",
    )
    peer_access_key_id: str | None = Field(
        default=None,
        description="Access key id of a key that the `region_servers` peers know (`llamarock keys create` there): "
        "forwarded requests are signed with it (SigV4, service bedrock, the inference region). Empty: they are sent "
        "unsigned, which peers accept only in `--auth dev` (and then run in the peer's `region`).",
    )
    peer_secret_access_key: str | None = Field(
        default=None, description="Secret access key for `peer_access_key_id`."
    )
    peer_timeout_s: float = Field(
        default=300.0, gt=0,
        description="Seconds to wait for a `region_servers` peer to accept the connection and for each piece of its "
        "answer; past it the call fails with ServiceUnavailableException.",
    )
    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Directory for the metadata database, logs and blobs (env LLAMAROCK_DATA_DIR).",
    )
    engine: EngineName = Field(
        default="llamacpp", description="Engine for deployments that do not name one: 'llamacpp' or 'fake'."
    )
    threads: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1), ge=1, description="Default CPU threads per deployment."
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log verbosity.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Log line format: 'text', or 'json' (one JSON object per line: time, level, logger, message, "
        "and request_id, operation, model, status, latency_ms where known; one access line per request).",
    )
    aliases: dict[str, str] = Field(
        default_factory=dict, description="Extra model names clients may use, each mapped to a catalog model id."
    )
    deployments: list[DeploymentSettings] = Field(
        default_factory=list,
        description="Model deployments, first match wins; empty means one deployment of the embedded SmolLM2 "
        "serving every catalog id.",
    )
    embedding_deployments: list[EmbeddingDeploymentSettings] = Field(
        default_factory=list,
        description="Embedding deployments (Titan and Cohere embedding model ids), first match wins; empty means "
        "the embedded all-MiniLM-L6-v2 on onnxruntime serving every embedding model id (docs/embeddings.md).",
    )
    compat: Literal["extended", "bedrock"] = Field(
        default="extended",
        description="'extended': Bedrock's API plus what llamarock adds for Llama (forced tool choice, streaming tool "
        "use, structured output, prompt-cache counts, service tiers, on-demand Llama 3.2/3.3 in us-west-2); "
        "'bedrock': refuse everything Bedrock refuses for Meta models, with Bedrock's errors (docs/compat.md).",
    )
    auth: Literal["dev", "enforce"] = Field(
        default="dev",
        description="'dev' (loopback addresses only): unsigned requests and unknown keys act as a `dev` principal "
        "that may do anything; 'enforce': every request needs a key from `llamarock keys create`, and its policy "
        "and quotas apply.",
    )
    tls_cert: Path | None = Field(
        default=None, description="PEM certificate file: serve HTTPS (botocore sends bearer tokens only over HTTPS)."
    )
    tls_key: Path | None = Field(default=None, description="PEM private key file for `tls_cert`.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the metadata database (keys, principals); empty means SQLite at "
        "<data_dir>/llamarock.db. Secrets in it are encrypted with <data_dir>/secret.key.",
    )
    account_id: str = Field(
        default="000000000000",
        pattern=r"^\d{12}$",
        description="AWS account id the server answers as: in principal ARNs (arn:aws:iam::<account>:user/<name>) "
        "and inference-profile ARNs.",
    )
    shared_quotas: bool | None = Field(
        default=None,
        description="Count requests and tokens per minute of API keys (default_rpm/default_tpm and per-key limits) in "
        "the metadata database, so that every server on it shares one exact count; empty means on when database_url "
        "names a server database (PostgreSQL: several gateways) and off for the default SQLite file (one server, "
        "counted in memory).",
    )
    default_rpm: int | None = Field(
        default=None, ge=1, description="Requests per minute per principal and model; empty means unlimited. "
        "`keys create --rpm` overrides it for one principal.",
    )
    default_tpm: int | None = Field(
        default=None, ge=1, description="Tokens (prompt + generated) per minute per principal and model; empty "
        "means unlimited. `keys create --tpm` overrides it for one principal.",
    )
    provisioned_sequences_per_unit: int = Field(
        default=2, ge=1,
        description="Provisioned Throughput: concurrent sequences each model unit reserves on the deployment serving "
        "its model. On-demand requests may use only the deployment's `max_parallel` minus all reservations.",
    )
    provisioned_tpm_per_unit: int = Field(
        default=60_000, ge=1,
        description="Provisioned Throughput: tokens (prompt + generated) per minute each model unit allows; requests "
        "through the provisioned model beyond it get ThrottlingException.",
    )
    provisioning_seconds: float = Field(
        default=5.0, ge=0,
        description="Provisioned Throughput: how long a new (or model-changing) provisioned model stays Creating "
        "(Updating) before it is InService, once the deployment serving its model is loaded.",
    )
    pending_body_limit_bytes: int = Field(
        default=268_435_456, ge=25_000_000,
        description="Most bytes of request bodies held at once while they are read, before their signatures are "
        "checked (each body is at most 25 MB); a request that would go past it gets ServiceUnavailableException. "
        "Requests without a valid credential are refused before their body is read.",
    )
    header_timeout_s: float = Field(
        default=10.0, gt=0,
        description="Seconds a client may take to send a request's line and headers, from the moment its connection "
        "opened or its previous response ended; past it the connection is closed (slow clients cannot hold "
        "connections open).",
    )
    idle_timeout_s: int = Field(
        default=5, ge=1, description="Seconds an idle keep-alive connection stays open between requests.",
    )
    body_read_timeout_s: float = Field(
        default=60.0, gt=0,
        description="Seconds a client may take to send a request's body once its headers arrived; past it the "
        "request gets RequestTimeoutException (408).",
    )
    forwarded_allow_ips: list[str] = Field(
        default_factory=list,
        description="Addresses of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto headers are trusted "
        "(the client address and scheme policies and the audit log see), e.g. `[\"10.0.0.2\"]` or `[\"*\"]`; "
        "empty means no proxy headers are trusted, from anyone (loopback included).",
    )
    clock_skew_seconds: int = Field(
        default=300, ge=1, description="How far a SigV4 timestamp may be from the server's clock, in seconds."
    )
    audit_log_max_bytes: int = Field(
        default=10_000_000, ge=1024, description="Size at which <data_dir>/logs/audit.jsonl is rotated."
    )
    audit_log_backups: int = Field(default=5, ge=0, description="Rotated audit log files to keep.")
    blob_store_url: str = Field(
        default="",
        pattern=r"^$|^(file|https?)://",
        description="Where buckets (e.g. model invocation logging's s3Config.bucketName) live: empty means a local "
        "folder, <data_dir>/blobs/<bucket>/<key> (create a bucket with mkdir); file:///path means that folder; "
        "http://host:port or https://... means an S3-compatible endpoint (MinIO, Ceph, moto, AWS S3) via boto3. "
        "With a local folder, the server's own S3 endpoint serves it on the same port (docs/s3.md); with an "
        "S3-compatible endpoint that one is off.",
    )
    s3_virtual_hosts: list[str] = Field(
        default_factory=lambda: ["localhost"],
        description="Host names of this server for S3 virtual-hosted-style requests: a request whose Host is "
        "`<bucket>.<name>[:port]` addresses bucket <bucket> (docs/s3.md). `host`, when it is a name, counts too; "
        "other requests use path-style addressing (`/<bucket>/<key>`).",
    )
    blob_store_access_key_id: str | None = Field(
        default=None,
        description="Access key id for an S3-compatible `blob_store_url`; empty means boto3's usual credential "
        "chain (AWS_ACCESS_KEY_ID, ~/.aws/credentials, ...).",
    )
    blob_store_secret_access_key: str | None = Field(
        default=None, description="Secret access key for `blob_store_access_key_id`."
    )
    blob_store_region: str | None = Field(
        default=None, description="Region to sign S3-compatible blob store requests for; empty means `region`."
    )
    invocation_log_spool_max_bytes: int = Field(
        default=1_073_741_824, ge=1024,
        description="Model invocation logging: most bytes of records waiting in <data_dir>/spool/invocation-logs.db "
        "for delivery while the blob store is unreachable. When it is full, new records are dropped, counted and "
        "logged; none already spooled is lost.",
    )
    invocation_log_retry_max_s: float = Field(
        default=60.0, gt=0,
        description="Model invocation logging: longest wait between delivery attempts to a failing destination "
        "(bucket and prefix); the wait doubles from min(0.5 s, this) up to this, while other destinations keep "
        "flowing.",
    )
    prices: dict[str, PriceSettings] = Field(
        default_factory=dict,
        description="Prices by catalog model id, e.g. `[prices.\"meta.llama3-8b-instruct-v1:0\"]` with "
        "`input = 0.3`, `output = 0.6` (USD per 1M tokens); they override the catalog's. Models with no price are "
        "reported as unpriced (cost null).",
    )
    tier_price_multipliers: dict[ServiceTierName, Decimal] = Field(
        default_factory=lambda: dict(DEFAULT_TIER_PRICE_MULTIPLIERS),
        description="Per-token price of each service tier (serviceTier) as a multiple of the on-demand price, e.g. "
        "`[tier_price_multipliers]` with `flex = 0.5`. Tiers not named keep the default: Bedrock's ratios, priority "
        "1.75 (a 75% premium), flex 0.5 (50% off), default 1, and reserved 1 (Bedrock bills reservations by the "
        "month, not the token).",
    )
    cache_read_price_fraction: Decimal = Field(
        default=Decimal(0), ge=0, le=1,
        description="Share of the input price charged for prompt tokens read from the prefix cache "
        "(cacheReadInputTokens). 0 by default: Bedrock offers no prompt caching for Llama models, so there is no "
        "Bedrock price to copy, and the prefix cache is llamarock's own optimization; 0 keeps costs equal to the "
        "reported inputTokens/outputTokens times the spec's prices. 1 prices cache reads as plain input.",
    )
    knowledge_rds_url: str | None = Field(
        default=None,
        pattern=r"^$|^postgres(ql)?://",
        description="Connection URI (postgresql://user:password@host:port/database) of the PostgreSQL database, "
        "with the pgvector extension, where knowledge bases "
        "whose storageConfiguration.type is RDS keep their vectors, whatever their rdsConfiguration.resourceArn "
        "(unless `knowledge_rds_urls` names it). Empty: CreateKnowledgeBase with RDS storage is refused.",
    )
    knowledge_rds_urls: dict[str, str] = Field(
        default_factory=dict,
        description="PostgreSQL URLs by rdsConfiguration.resourceArn, for knowledge bases on several databases: "
        "`[knowledge_rds_urls]` with `\"arn:aws:rds:us-east-1:123456789012:cluster:kb\" = \"postgresql://...\"`.",
    )
    knowledge_max_document_bytes: int = Field(
        default=50_000_000, ge=1,
        description="Largest source document a knowledge base ingests (Bedrock's quota: 50 MB); a larger file is "
        "counted as failed in its ingestion job, and an inline document larger than this is refused.",
    )
    jobs_executor: Literal["local", "ray"] = Field(
        default="local",
        description="Where batch inference jobs (CreateModelInvocationJob) run their records: `local` in the "
        "server process, on its own deployments; `ray` as Ray tasks on the cluster at `ray_address`, each worker "
        "running llamarock's engine on its node (docs/batch.md).",
    )
    ray_address: str | None = Field(
        default=None,
        description="Address of the Ray cluster for `jobs_executor = \"ray\"`: its head's GCS address (e.g. "
        "`10.0.0.5:6379`, what `ray start --head` prints); `local` starts a single-node Ray inside the server "
        "instead. Required with the ray executor (docs/batch.md).",
    )
    batch_concurrency: int = Field(
        default=2, ge=1, le=128,
        description="Records of one batch inference job run at once (local executor). Keep it below the "
        "deployment's `max_parallel` so that on-demand requests always find a free slot: batch records are admitted "
        "behind every on-demand request, but a running record is not preempted, and on a CPU each running record "
        "slows every decode step (bench/batch.py: online TTFT p95 x1.5 at 2, x4.8 at 4 on SmolLM2, 2 cores).",
    )
    batch_price_multiplier: Decimal = Field(
        default=Decimal("0.5"), ge=0,
        description="Per-token price of batch inference records as a multiple of the on-demand price (Bedrock's batch "
        "inference: 0.5, 50% off). Batch records show as service tier `batch` in the usage report.",
    )
    batch_max_jobs: int = Field(
        default=1, ge=1, le=64,
        description="Batch inference jobs run at once; later ones wait as Scheduled, oldest first.",
    )
    ray_workers_per_node: int = Field(
        default=1, ge=1, le=64,
        description="Ray executor: batch workers per node of the cluster, each with its own copy of the job's "
        "deployment (its engine and weights) running up to the deployment's `max_parallel` records at once.",
    )
    ray_worker_cpus: int = Field(
        default=1, ge=1,
        description="Ray executor: CPUs each batch worker reserves on its node (Ray's num_cpus); its engine uses as "
        "many threads unless the deployment or `threads` is set explicitly.",
    )
    # Custom Model Import (docs/model-import.md)
    imported_model_idle_s: float = Field(
        default=300.0, gt=0,
        description="Custom Model Import: seconds an imported model may go unused before its engine is unloaded "
        "(scale to zero); the next request gets ModelNotReadyException while it loads again.",
    )
    imported_model_dtype: Literal["f16", "f32", "q8_0"] = Field(
        default="f16",
        description="Custom Model Import: how a Hugging Face folder's weight matrices are stored in the converted "
        "GGUF (norms are always f32). q8_0 halves the memory of f16 for a small loss of quality.",
    )
    imported_model_threads: int | None = Field(
        default=None, ge=1, description="Custom Model Import: CPU threads of each imported model's engine; empty "
        "means the top-level `threads`.",
    )
    imported_model_cmu_price_per_minute: Decimal = Field(
        default=Decimal("0.0785"), ge=0,
        description="Custom Model Import: USD per Custom Model Unit per minute (Bedrock's CMU v1.0 price in "
        "us-east-1), billed per 5-minute window while an imported model's copy is loaded.",
    )
    # Model customization (fine-tuning jobs: docs/customization.md)
    customization_max_jobs: int = Field(
        default=1, ge=1, le=16,
        description="Fine-tuning jobs (CreateModelCustomizationJob) that train at once, each in its own process; "
        "later ones wait InProgress.",
    )
    customization_max_tokens: int = Field(
        default=512, ge=32, le=131072,
        description="Tokens of one training row (prompt and completion, rendered in the chat template) at most; a "
        "longer row loses the start of its prompt, then the end of its completion.",
    )
    customization_checkpoint_steps: int = Field(
        default=50, ge=1,
        description="Fine-tuning saves a checkpoint every this many steps and at the end of every epoch; a server "
        "restarted mid-job resumes from the last one.",
    )
    customization_threads: int | None = Field(
        default=None, ge=1, description="CPU threads of a fine-tuning process; empty means the top-level `threads` "
        "(or torch's default)."
    )
    customization_device: str = Field(
        default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$",
        description="Device fine-tuning runs on: `auto` (a CUDA GPU when torch sees one, else the CPU), `cpu`, "
        "`cuda` or `cuda:N`.",
    )

    @model_validator(mode="after")
    def _default_region_is_served(self) -> Settings:
        if self.regions and "region" not in self.model_fields_set:
            self.region = self.regions[0]
        elif self.regions and self.region not in self.regions:
            raise ValueError(
                f"region {self.region} (the region of unsigned and bearer-token requests) must be one of "
                f"regions ({', '.join(self.regions)})"
            )
        return self

    @model_validator(mode="after")
    def _peer_key_is_whole(self) -> Settings:
        if bool(self.peer_access_key_id) != bool(self.peer_secret_access_key):
            raise ValueError("peer_access_key_id and peer_secret_access_key are set together, or neither")
        return self

    @field_validator("tier_price_multipliers")
    @classmethod
    def _every_tier_priced(cls, value: dict[ServiceTierName, Decimal]) -> dict[ServiceTierName, Decimal]:
        negative = sorted(tier for tier, multiplier in value.items() if multiplier < 0)
        if negative:
            raise ValueError(f"tier_price_multipliers must not be negative: {', '.join(negative)}")
        merged: dict[ServiceTierName, Decimal] = {**DEFAULT_TIER_PRICE_MULTIPLIERS, **value}
        return merged

    @field_validator("deployments", "embedding_deployments")
    @classmethod
    def _unique_names(cls, value: list[Any]) -> list[Any]:
        names = [d.name for d in value]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"deployment names must be unique; repeated: {', '.join(duplicates)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = _CONFIG_FILE.get()
        if config_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
        return tuple(sources)

    def effective_deployments(self) -> list[DeploymentSettings]:
        """The configured deployments, or the embedded default when none is configured."""
        if self.deployments:
            return list(self.deployments)
        return [DeploymentSettings(name="smollm2-135m-embedded", models=["*"])]

    def effective_embedding_deployments(self) -> list[EmbeddingDeploymentSettings]:
        """The configured embedding deployments, or the embedded all-MiniLM-L6-v2 when none is configured."""
        if self.embedding_deployments:
            return list(self.embedding_deployments)
        return [EmbeddingDeploymentSettings(name="minilm-l6-embedded", models=["*"])]


def load_settings(config_file: Path | str | None = None, **overrides: Any) -> Settings:
    """Build the settings from flags (``overrides``, None values ignored), environment and config file."""
    path = config_file or os.environ.get("LLAMAROCK_CONFIG")
    token = _CONFIG_FILE.set(Path(path) if path else None)
    try:
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    finally:
        _CONFIG_FILE.reset(token)
