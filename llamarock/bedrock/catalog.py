"""The model catalog: the Meta Llama models Bedrock offers, and the text embedding models llamarock serves beside
them (Amazon Titan Text Embeddings, Cohere Embed v3), as data.

Everything that needs a fact about a model (context window, modalities, prices, regions, capabilities, lifecycle)
reads it here. Figures come from the product spec; where the spec is silent the field is ``None`` (prices) or the
value Bedrock's own model listing and model cards show (modalities, inference types, customizations, lifecycle
dates), as noted beside each.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

LifecycleStatus = Literal["ACTIVE", "LEGACY"]
END_OF_LIFE = (
    "This model version has reached the end of its life. Please refer to the AWS documentation for more details."
)


def _day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@dataclass(frozen=True)
class Lifecycle:
    """A model's lifecycle on Bedrock (botocore's ``FoundationModelLifecycle``), as dates.

    ``legacy`` is when Bedrock moved it to LEGACY, ``end_of_life`` when invocations started failing with Bedrock's
    "reached the end of its life" error. ``legacy_undated`` marks a model AWS lists as Legacy without a date we could
    find. The status is computed from the dates at the time of the request.
    """

    start: datetime | None = None
    legacy: datetime | None = None
    public_extended_access: datetime | None = None
    end_of_life: datetime | None = None
    legacy_undated: bool = False

    def status(self, now: datetime | None = None) -> LifecycleStatus:
        now = now or datetime.now(UTC)
        if self.legacy_undated or any(
            moment is not None and moment <= now for moment in (self.legacy, self.end_of_life)
        ):
            return "LEGACY"
        return "ACTIVE"

    def ended(self, now: datetime | None = None) -> bool:
        """Whether the model is past its end of life (Bedrock refuses to invoke it)."""
        return self.end_of_life is not None and self.end_of_life <= (now or datetime.now(UTC))


@dataclass(frozen=True)
class Price:
    """On-demand price in US dollars per one million tokens."""

    input_per_million: float
    output_per_million: float


@dataclass(frozen=True)
class EmbeddingFacts:
    """What an embedding model's Bedrock body and limits are (its model card and InvokeModel reference).

    ``body`` names the request and response shape (``bedrock/embeddings.py``); ``dimensions`` are the sizes Bedrock's
    own model gives (``default_dimensions`` without a request for one), ``max_input_tokens`` and ``max_input_chars``
    its input limits, ``max_texts`` how many texts one request may carry.
    """

    body: Literal["titan-v1", "titan-v2", "cohere-v3"]
    dimensions: tuple[int, ...]
    default_dimensions: int
    max_input_tokens: int
    max_input_chars: int
    max_texts: int = 1


@dataclass(frozen=True)
class CatalogModel:
    """One Bedrock foundation model.

    Where it is offered (docs/regions.md; ``model_regions`` / ``on_demand_regions`` settings override it):
    ``regions`` are the regions that run it (the destinations of its inference profiles), ``on_demand_regions``
    those where its own id or foundation-model ARN may be invoked, and ``geo_profiles`` the geographies (``us``,
    ``eu``, ``apac``) of its system-defined cross-region inference profiles. Llama 3.2 and 3.3 are geofenced as
    the spec says: on demand only in US West (Oregon), elsewhere only through the profile of the caller's geography.
    """

    model_id: str
    name: str
    family: str
    parameters_billion: float  # total parameters (Llama 4's mixtures of experts: 17B active of them)
    context_window: int
    input_modalities: tuple[str, ...]
    output_modalities: tuple[str, ...]
    capabilities: tuple[str, ...]
    max_gen_len: int
    max_output_tokens: int
    prompt_format: str
    instruct: bool
    tool_use: bool
    fine_tuning: bool
    latency_optimized: bool
    regions: tuple[str, ...]
    geo_profiles: tuple[str, ...]
    on_demand_regions: tuple[str, ...]
    on_demand_price: Price | None = None
    provisioned_hourly_usd: float | None = None
    dates: Lifecycle = field(default_factory=Lifecycle)
    vendor: str = "Meta"
    # Set for an embedding model (output modality EMBEDDING): served by an embedding deployment, InvokeModel only.
    embedding: EmbeddingFacts | None = None
    # Whether Provisioned Throughput is offered for this model id (inferenceTypesSupported lists PROVISIONED).
    provisioned: bool = True

    @property
    def lifecycle(self) -> LifecycleStatus:
        """ACTIVE or LEGACY now (a model past its end of life is LEGACY: botocore's enum has no third state)."""
        return self.dates.status()

    @property
    def supports_images(self) -> bool:
        return "IMAGE" in self.input_modalities

    @property
    def provider(self) -> str:
        return self.vendor

    @property
    def is_embedding(self) -> bool:
        return self.embedding is not None


_US = ("us-east-1", "us-east-2", "us-west-2")
_OREGON = ("us-west-2",)
# The destinations of Llama 4's us. inference profile as AWS lists them (the spec says only "profile only (us.)").
_US4 = ("us-east-1", "us-east-2", "us-west-1", "us-west-2")
_TEXT = ("TEXT",)
_VISION = ("TEXT", "IMAGE")

LLAMA_MODELS: tuple[CatalogModel, ...] = (
    CatalogModel(
        model_id="meta.llama3-3-70b-instruct-v1:0", name="Llama 3.3 70B Instruct", family="llama3.3",
        parameters_billion=70, context_window=128_000, input_modalities=_TEXT, output_modalities=_TEXT,
        capabilities=("reasoning", "code generation", "multilingual"),
        max_gen_len=2048, max_output_tokens=4096, prompt_format="llama3", instruct=True, tool_use=True,
        fine_tuning=False, latency_optimized=False, regions=_US, geo_profiles=("us",), on_demand_regions=_OREGON,
        dates=Lifecycle(start=_day("2024-12-19")),
    ),
    CatalogModel(
        model_id="meta.llama3-2-90b-instruct-v1:0", name="Llama 3.2 90B Vision Instruct", family="llama3.2",
        parameters_billion=90, context_window=128_000, input_modalities=_VISION, output_modalities=_TEXT,
        capabilities=("image understanding", "visual question answering", "document visual QA"),
        max_gen_len=2048, max_output_tokens=4096, prompt_format="llama3", instruct=True, tool_use=True,
        fine_tuning=True, latency_optimized=False, regions=_US, geo_profiles=("us",), on_demand_regions=_OREGON,
        dates=Lifecycle(start=_day("2024-09-25")),
    ),
    CatalogModel(
        model_id="meta.llama3-2-11b-instruct-v1:0", name="Llama 3.2 11B Vision Instruct", family="llama3.2",
        parameters_billion=11, context_window=128_000, input_modalities=_VISION, output_modalities=_TEXT,
        capabilities=("image captioning", "visual question answering", "conversational AI"),
        max_gen_len=2048, max_output_tokens=4096, prompt_format="llama3", instruct=True, tool_use=True,
        fine_tuning=True, latency_optimized=False, regions=_US, geo_profiles=("us",), on_demand_regions=_OREGON,
        dates=Lifecycle(start=_day("2024-09-25")),
    ),
    CatalogModel(
        model_id="meta.llama3-2-3b-instruct-v1:0", name="Llama 3.2 3B Instruct", family="llama3.2",
        parameters_billion=3, context_window=128_000, input_modalities=_TEXT, output_modalities=_TEXT,
        capabilities=("fast text generation", "summarization", "simple code generation"),
        max_gen_len=2048, max_output_tokens=4096, prompt_format="llama3", instruct=True, tool_use=False,
        fine_tuning=True, latency_optimized=False, regions=(*_US, "eu-central-1", "eu-west-1", "eu-west-3"),
        geo_profiles=("us", "eu"), on_demand_regions=_OREGON,
        dates=Lifecycle(start=_day("2024-09-25")),
    ),
    CatalogModel(
        model_id="meta.llama3-2-1b-instruct-v1:0", name="Llama 3.2 1B Instruct", family="llama3.2",
        parameters_billion=1, context_window=128_000, input_modalities=_TEXT, output_modalities=_TEXT,
        capabilities=("very fast inference", "text completion", "simple conversation"),
        max_gen_len=2048, max_output_tokens=4096, prompt_format="llama3", instruct=True, tool_use=False,
        fine_tuning=True, latency_optimized=False, regions=(*_US, "eu-central-1", "eu-west-1", "eu-west-3"),
        geo_profiles=("us", "eu"), on_demand_regions=_OREGON,
        dates=Lifecycle(start=_day("2024-09-25")),
    ),
    CatalogModel(
        model_id="meta.llama3-1-405b-instruct-v1:0", name="Llama 3.1 405B Instruct", family="llama3.1",
        parameters_billion=405, context_window=128_000, input_modalities=_TEXT, output_modalities=_TEXT,
        capabilities=("reasoning", "complex code generation", "mathematics", "creative writing"),
        max_gen_len=2048, max_output_tokens=4096, prompt_format="llama3", instruct=True, tool_use=True,
        fine_tuning=False, latency_optimized=True, regions=_OREGON, geo_profiles=("us",), on_demand_regions=_OREGON,
        on_demand_price=Price(5.32, 16.00),
        dates=Lifecycle(start=_day("2024-07-23"), legacy=_day("2026-07-07")),
    ),
    CatalogModel(
        model_id="meta.llama3-1-70b-instruct-v1:0", name="Llama 3.1 70B Instruct", family="llama3.1",
        parameters_billion=70, context_window=128_000, input_modalities=_TEXT, output_modalities=_TEXT,
        capabilities=("reasoning", "code generation and review", "content creation", "technical documentation"),
        max_gen_len=2048, max_output_tokens=4096, prompt_format="llama3", instruct=True, tool_use=True,
        fine_tuning=False, latency_optimized=True, regions=_OREGON, geo_profiles=("us",), on_demand_regions=_OREGON,
        on_demand_price=Price(0.99, 2.99),
        dates=Lifecycle(start=_day("2024-07-23")),
    ),
    CatalogModel(
        model_id="meta.llama3-1-8b-instruct-v1:0", name="Llama 3.1 8B Instruct", family="llama3.1",
        parameters_billion=8, context_window=128_000, input_modalities=_TEXT, output_modalities=_TEXT,
        capabilities=("text generation", "question answering", "code assistance", "summarization"),
        max_gen_len=2048, max_output_tokens=4096, prompt_format="llama3", instruct=True, tool_use=True,
        fine_tuning=False, latency_optimized=False, regions=_OREGON, geo_profiles=("us",), on_demand_regions=_OREGON,
        on_demand_price=Price(0.22, 0.22),
        dates=Lifecycle(start=_day("2024-07-23")),
    ),
    CatalogModel(
        model_id="meta.llama3-70b-instruct-v1:0", name="Llama 3 70B Instruct", family="llama3",
        parameters_billion=70, context_window=8_000, input_modalities=_TEXT, output_modalities=_TEXT,
        capabilities=("text generation", "reasoning", "code generation", "creative writing"),
        max_gen_len=2048, max_output_tokens=2048, prompt_format="llama3", instruct=True, tool_use=False,
        fine_tuning=False, latency_optimized=False, regions=_US, geo_profiles=(), on_demand_regions=_US,
        dates=Lifecycle(start=_day("2024-04-23"), legacy_undated=True),
    ),
    CatalogModel(
        model_id="meta.llama3-8b-instruct-v1:0", name="Llama 3 8B Instruct", family="llama3",
        parameters_billion=8, context_window=8_000, input_modalities=_TEXT, output_modalities=_TEXT,
        capabilities=("fast text generation", "basic reasoning", "simple code tasks"),
        max_gen_len=2048, max_output_tokens=2048, prompt_format="llama3", instruct=True, tool_use=False,
        fine_tuning=False, latency_optimized=False, regions=_US, geo_profiles=(), on_demand_regions=_US,
        dates=Lifecycle(start=_day("2024-04-23"), legacy_undated=True),
    ),
    # Lifecycle dates: launch dates as AWS's model cards give them; Llama 3.1 405B's legacy date from its model card
    # (the spec's §9); Llama 3 Legacy as AWS's lifecycle page lists it, with no date we could confirm. Llama 2's end
    # of life (the spec: "retired (EOL 2024)") is dated 2024-08-12 from AWS's deprecation notice as we recall it; the
    # lifecycle table itself could not be read back to confirm the day.
    CatalogModel(
        model_id="meta.llama2-13b-chat-v1", name="Llama 2 Chat 13B", family="llama2",
        parameters_billion=13, context_window=4_096, input_modalities=_TEXT, output_modalities=_TEXT,
        capabilities=("conversational AI", "text generation", "simple Q&A"),
        max_gen_len=2048, max_output_tokens=2048, prompt_format="llama2", instruct=True, tool_use=False,
        fine_tuning=False, latency_optimized=False, regions=_US, geo_profiles=(), on_demand_regions=_US,
        on_demand_price=Price(0.75, 1.00), provisioned_hourly_usd=21.18,
        dates=Lifecycle(start=_day("2023-11-14"), legacy_undated=True, end_of_life=_day("2024-08-12")),
    ),
    CatalogModel(
        model_id="meta.llama2-70b-v1", name="Llama 2 70B", family="llama2",
        parameters_billion=70, context_window=4_096, input_modalities=_TEXT, output_modalities=_TEXT,
        capabilities=("text completion", "foundation for fine-tuning"),
        max_gen_len=2048, max_output_tokens=2048, prompt_format="plain", instruct=False, tool_use=False,
        fine_tuning=True, latency_optimized=False, regions=_US, geo_profiles=(), on_demand_regions=_US,
        provisioned_hourly_usd=21.18,
        dates=Lifecycle(start=_day("2023-11-14"), legacy_undated=True, end_of_life=_day("2024-08-12")),
    ),
    # Llama 4 (the spec's §9 and AWS's model cards): text and image in, Invoke and Converse, tool use (toolChoice
    # auto), offered only through the us. cross-region inference profile (no on-demand region). The spec gives no
    # prices: these are AWS's published on-demand prices (US regions, USD per 1M input / output tokens).
    CatalogModel(
        model_id="meta.llama4-scout-17b-instruct-v1:0", name="Llama 4 Scout 17B Instruct", family="llama4",
        parameters_billion=109, context_window=3_500_000, input_modalities=_VISION, output_modalities=_TEXT,
        capabilities=("image understanding", "long-context reasoning", "multilingual", "tool use"),
        max_gen_len=2048, max_output_tokens=8192, prompt_format="llama4", instruct=True, tool_use=True,
        fine_tuning=False, latency_optimized=False, regions=_US4, geo_profiles=("us",), on_demand_regions=(),
        on_demand_price=Price(0.17, 0.66),
        dates=Lifecycle(start=_day("2025-04-05")),
    ),
    CatalogModel(
        model_id="meta.llama4-maverick-17b-instruct-v1:0", name="Llama 4 Maverick 17B Instruct", family="llama4",
        parameters_billion=400, context_window=1_048_576, input_modalities=_VISION, output_modalities=_TEXT,
        capabilities=("image understanding", "reasoning", "code generation", "multilingual", "tool use"),
        max_gen_len=2048, max_output_tokens=8192, prompt_format="llama4", instruct=True, tool_use=True,
        fine_tuning=False, latency_optimized=False, regions=_US4, geo_profiles=("us",), on_demand_regions=(),
        on_demand_price=Price(0.24, 0.97),
        dates=Lifecycle(start=_day("2025-04-05")),
    ),
)

# Text embedding models (docs/embeddings.md). Served by an embedding deployment (the embedded all-MiniLM-L6-v2 unless
# the operator maps them elsewhere), never by a Llama deployment; InvokeModel only (Bedrock refuses Converse and
# streaming for them). Facts from AWS's model cards and InvokeModel reference: Titan Text Embeddings V2 takes up to
# 8,192 tokens or 50,000 characters and gives 1024 (default), 512 or 256 dimensions; Titan Embeddings G1 - Text up to
# 8,192 tokens and 1536 dimensions; Cohere Embed v3 up to 96 texts of at most 2,048 characters each (512 tokens) and
# 1024 dimensions. Regions as AWS's model-support table listed them when this was written (operators can change them
# with model_regions); on-demand prices in USD per million input tokens.
_EMBED_TEXT = ("embeddings", "semantic search", "retrieval-augmented generation")
_TITAN_V2_REGIONS = ("us-east-1", "us-east-2", "us-west-2", "ca-central-1", "eu-central-1", "eu-central-2",
                     "eu-west-1", "eu-west-2", "eu-west-3", "ap-northeast-1", "ap-northeast-2", "ap-south-1",
                     "ap-southeast-2", "sa-east-1")
_TITAN_V1_REGIONS = ("us-east-1", "us-west-2", "ap-northeast-1", "eu-central-1")
_COHERE_REGIONS = ("us-east-1", "us-west-2", "ap-northeast-1", "ap-south-1", "ap-southeast-1", "ap-southeast-2",
                   "ca-central-1", "eu-central-1", "eu-west-1", "eu-west-2", "eu-west-3", "sa-east-1")


def _embedding_model(model_id: str, name: str, vendor: str, family: str, regions: tuple[str, ...],
                     facts: EmbeddingFacts, price: float, start: str) -> CatalogModel:
    return CatalogModel(
        model_id=model_id, name=name, family=family, parameters_billion=0, context_window=facts.max_input_tokens,
        input_modalities=_TEXT, output_modalities=("EMBEDDING",), capabilities=_EMBED_TEXT,
        max_gen_len=0, max_output_tokens=0, prompt_format="none", instruct=False, tool_use=False, fine_tuning=False,
        latency_optimized=False, regions=regions, geo_profiles=(), on_demand_regions=regions,
        on_demand_price=Price(price, 0.0), dates=Lifecycle(start=_day(start)), vendor=vendor, embedding=facts,
        provisioned=False,
    )


EMBEDDING_MODELS: tuple[CatalogModel, ...] = (
    _embedding_model(
        "amazon.titan-embed-text-v2:0", "Titan Text Embeddings V2", "Amazon", "titan-embed", _TITAN_V2_REGIONS,
        EmbeddingFacts("titan-v2", (1024, 512, 256), 1024, 8192, 50_000), 0.02, "2024-04-30",
    ),
    _embedding_model(
        "amazon.titan-embed-text-v1", "Titan Embeddings G1 - Text", "Amazon", "titan-embed", _TITAN_V1_REGIONS,
        EmbeddingFacts("titan-v1", (1536,), 1536, 8192, 50_000), 0.10, "2023-09-28",
    ),
    _embedding_model(
        "cohere.embed-english-v3", "Embed English", "Cohere", "cohere-embed", _COHERE_REGIONS,
        EmbeddingFacts("cohere-v3", (1024,), 1024, 512, 2048, max_texts=96), 0.10, "2023-11-13",
    ),
    _embedding_model(
        "cohere.embed-multilingual-v3", "Embed Multilingual", "Cohere", "cohere-embed", _COHERE_REGIONS,
        EmbeddingFacts("cohere-v3", (1024,), 1024, 512, 2048, max_texts=96), 0.10, "2023-11-13",
    ),
)
MODELS: tuple[CatalogModel, ...] = (*LLAMA_MODELS, *EMBEDDING_MODELS)

BY_ID: dict[str, CatalogModel] = {m.model_id: m for m in MODELS}


def get(model_id: str) -> CatalogModel | None:
    """The catalog entry for a base model id, or None."""
    return BY_ID.get(model_id)
