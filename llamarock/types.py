"""Plain data passed between layers: no AWS shapes, no I/O.

Engines see only these types: a :class:`GenerationRequest` goes in, :class:`GenerationChunk` objects come out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Role = Literal["system", "user", "assistant", "tool"]

# Bedrock's defaults for Meta Llama models (native body and Converse alike): the one place they are written.
DEFAULT_TEMPERATURE = 0.5
DEFAULT_TOP_P = 0.9
DEFAULT_MAX_TOKENS = 512
StopReason = Literal["stop", "length"]


@dataclass(frozen=True)
class ChatMessage:
    """One turn of a conversation, already reduced to text."""

    role: Role
    content: str


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` means greedy decoding."""

    temperature: float = DEFAULT_TEMPERATURE
    top_p: float = DEFAULT_TOP_P
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int | None = None


@dataclass(frozen=True)
class CacheMark:
    """A point up to which the prefix cache keeps its own copy of a prompt (a Converse ``cachePoint`` block).

    In a ``messages`` request it is the end of ``messages[message].content[:chars]`` (``chars`` None: the whole
    message); in a ``prompt`` request ``message`` is None and ``chars`` is an offset into the prompt.
    """

    message: int | None
    chars: int | None = None


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter to apply over the served model's weights for one request (a custom model).

    ``key`` names it uniquely (the custom model's ARN): engines cache the loaded adapter, and key their prefix cache,
    by it. ``path`` is the adapter in llama.cpp's GGUF LoRA format (an engine that loads Hugging Face weights may
    take a peft folder instead); ``scale`` multiplies its effect (1.0: as trained).
    """

    key: str
    path: str
    scale: float = 1.0


@dataclass(frozen=True)
class GenerationRequest:
    """What an engine is asked to generate.

    Exactly one of ``prompt`` (raw text, tokenized as is, special tokens honoured) and ``messages`` (rendered with
    the serving model's own chat template, followed by the assistant generation prompt) is set.
    ``assistant_prefix`` is text the assistant turn already starts with (a prefilled answer). ``json_schema``, when
    set, constrains the output to one JSON document valid against it (constrained decoding). ``priority``
    orders admission: a waiting request with a higher priority gets the next free slot first (latency-optimized
    and provisioned-throughput traffic ahead of standard on-demand traffic); equal priorities keep arrival order. A
    negative priority marks background work (flex-tier requests, batch job records): an engine that batches gives
    the foreground's prompts precedence over it and keeps its steps small.
    ``cache_marks`` are the points where the prompt's prefix should stay cached on its own (an engine without a
    prefix cache ignores them). ``images`` are the request's images (the encoded bytes of png, jpeg, gif or webp
    files, already checked by the Bedrock layer), in the order of the ``<|image|>`` placeholders in the prompt or
    messages; only an engine whose ``EngineInfo.supports_images`` is true is given any. ``adapter``, when set, is a
    LoRA adapter (a custom model) the engine applies over its weights for this request only; an engine that cannot
    raises EngineError saying so.
    """

    sampling: SamplingParams
    prompt: str | None = None
    messages: tuple[ChatMessage, ...] | None = None
    assistant_prefix: str = ""
    request_id: str = ""
    json_schema: dict[str, Any] | None = None
    priority: int = 0
    cache_marks: tuple[CacheMark, ...] = ()
    images: tuple[bytes, ...] = ()
    adapter: Adapter | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("GenerationRequest needs exactly one of prompt and messages")


@dataclass
class GenerationChunk:
    """A group of generated tokens that decode to ``text``.

    ``token_count`` is how many tokens this chunk adds; the last chunk of a generation has ``stop_reason`` set and
    may carry empty text. ``prompt_tokens`` is set on the first chunk: the number of tokens the engine actually ran
    for the prompt, of which ``cached_tokens`` were reused from the prefix cache instead of being computed.
    """

    text: str
    token_count: int
    prompt_tokens: int | None = None
    stop_reason: StopReason | None = None
    cached_tokens: int | None = None


@dataclass(frozen=True)
class EngineInfo:
    """What an engine tells the layers above about the model it serves."""

    name: str
    context_length: int
    chat_format: str
    supports_images: bool = False
    details: dict[str, str] = field(default_factory=dict)
