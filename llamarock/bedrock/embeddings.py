"""The InvokeModel bodies of Bedrock's text embedding models: Amazon Titan Text Embeddings (V2 and G1) and Cohere
Embed v3. Validation (Bedrock's JSON-schema wording, as for the Llama native body) and response builders. Pure.

Request and response shapes (AWS's InvokeModel reference for each model)::

    Titan V2  {"inputText", "dimensions"?, "normalize"?, "embeddingTypes"?: ["float", "binary"]}
              -> {"embedding", "inputTextTokenCount", "embeddingsByType": {"float"?, "binary"?}}
    Titan G1  {"inputText"} -> {"embedding", "inputTextTokenCount"}
    Cohere v3 {"texts", "input_type", "truncate"?, "embedding_types"?: [float|int8|uint8|binary|ubinary]}
              -> {"id", "embeddings": [[...]] | {type: [[...]]}, "response_type", "texts"}

The vectors come from whatever embedding deployment serves the model id; its sizes are what ``dimensions`` may ask
for (the service layer checks that, naming the sizes it can give).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from jsonschema import Draft7Validator

from llamarock.bedrock.catalog import EmbeddingFacts
from llamarock.bedrock.native import decode_body, raise_malformed, schema_violations
from llamarock.bedrock.schema_limits import lone_surrogate

TITAN_TYPES: Final = ("float", "binary")
COHERE_TYPES: Final = ("float", "int8", "uint8", "binary", "ubinary")
COHERE_INPUT_TYPES: Final = ("search_document", "search_query", "classification", "clustering", "image")
TRUNCATE: Final = ("NONE", "START", "END")

_DRAFT7 = "http://json-schema.org/draft-07/schema#"


def _titan_schema(facts: EmbeddingFacts, v2: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"inputText": {"type": "string", "minLength": 1, "maxLength": facts.max_input_chars}}
    if v2:
        properties |= {
            "dimensions": {"type": "integer", "minimum": 1},
            "normalize": {"type": "boolean"},
            "embeddingTypes": {"type": "array", "items": {"enum": list(TITAN_TYPES)}, "minItems": 1,
                               "uniqueItems": True},
        }
    return {"$schema": _DRAFT7, "type": "object", "properties": properties, "required": ["inputText"],
            "additionalProperties": False}


def _cohere_schema(facts: EmbeddingFacts) -> dict[str, Any]:
    return {
        "$schema": _DRAFT7,
        "type": "object",
        "properties": {
            "texts": {"type": "array", "items": {"type": "string", "maxLength": facts.max_input_chars},
                      "maxItems": facts.max_texts},
            "images": {"type": "array", "items": {"type": "string"}},
            "input_type": {"enum": list(COHERE_INPUT_TYPES)},
            "truncate": {"enum": list(TRUNCATE)},
            "embedding_types": {"type": "array", "items": {"enum": list(COHERE_TYPES)}, "uniqueItems": True},
        },
        "required": ["texts", "input_type"],
        "additionalProperties": False,
    }


@functools.cache
def _validator(facts: EmbeddingFacts) -> Draft7Validator:
    schema = _cohere_schema(facts) if facts.body == "cohere-v3" else _titan_schema(facts, facts.body == "titan-v2")
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated embedding body, defaults applied.

    ``types`` are the embedding types to return; ``by_type`` whether the response groups them by type (Cohere with
    ``embedding_types``; Titan V2 always has ``embeddingsByType``). ``truncate`` is how inputs longer than the served
    model's window are handled: ``END`` drops the end, ``START`` the start, ``NONE`` refuses them.
    """

    texts: tuple[str, ...]
    dimensions: int | None = None
    normalize: bool = True
    types: tuple[str, ...] = ("float",)
    by_type: bool = False
    input_type: str | None = None
    truncate: str = "END"


def parse_request(facts: EmbeddingFacts, body: bytes) -> EmbeddingRequest:
    """Validate an InvokeModel body for an embedding model; ValidationException in Bedrock's words otherwise."""
    document = decode_body(body)
    messages = schema_violations(document, _validator(facts))
    if isinstance(document, dict):
        messages += _surrogates(document)
    raise_malformed(messages)
    if facts.body == "cohere-v3":
        return _cohere(document)
    texts = (document["inputText"],)
    if facts.body == "titan-v1":
        return EmbeddingRequest(texts)
    return EmbeddingRequest(
        texts,
        dimensions=document.get("dimensions"),
        normalize=document.get("normalize", True),
        types=tuple(document.get("embeddingTypes", ["float"])),
        by_type=True,
    )


def _cohere(document: dict[str, Any]) -> EmbeddingRequest:
    if "images" in document:
        raise_malformed(["#: extraneous key [images] is not permitted: image embeddings are not served here; "
                         "send texts"])
    if document["input_type"] == "image":
        raise_malformed(["#/input_type: image is not a valid enum value for texts (image embeddings are not served "
                         "here)"])
    types = document.get("embedding_types")
    return EmbeddingRequest(
        tuple(document["texts"]),
        types=tuple(types) if types else ("float",),
        by_type=bool(types),
        input_type=document["input_type"],
        truncate=document.get("truncate", "NONE"),
    )


def _surrogates(document: dict[str, Any]) -> list[str]:
    strings: list[tuple[str, Any]] = [("#/inputText", document.get("inputText"))]
    texts = document.get("texts")
    if isinstance(texts, list):
        strings += [(f"#/texts/{index}", text) for index, text in enumerate(texts)]
    messages = []
    for where, value in strings:
        surrogate = lone_surrogate(value) if isinstance(value, str) else None
        if surrogate is not None:
            messages.append(f"{where}: string contains the unpaired surrogate {surrogate} and is not valid UTF-8")
    return messages


# ------------------------------------------------------------------------------------------------------ responses


def quantize(vectors: Sequence[Sequence[float]], kind: str) -> list[list[int]] | list[list[float]]:
    """One embedding type of float vectors.

    ``float`` as is. ``int8``/``uint8``: each vector scaled by its largest absolute component to -127..127 (plus 128
    for uint8). ``binary``/``ubinary`` (Cohere): one bit per dimension (1 where the component is positive), packed
    eight to a byte, most significant bit first, as unsigned bytes (ubinary) or those minus 128 (binary).
    ``titan-binary``: Titan's unpacked form, 0 or 1 per dimension.
    """
    if kind == "float":
        return [list(map(float, v)) for v in vectors]
    array = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    if kind in ("int8", "uint8"):
        scale = np.abs(array).max(axis=1, keepdims=True)
        scaled = np.rint(array / np.maximum(scale, 1e-12) * 127).astype(np.int32)
        return (scaled + (128 if kind == "uint8" else 0)).tolist()  # type: ignore[no-any-return]
    bits = (array > 0).astype(np.uint8)
    if kind == "titan-binary":
        return bits.astype(np.int32).tolist()  # type: ignore[no-any-return]
    packed = np.packbits(bits, axis=1).astype(np.int32)
    if kind == "binary":
        packed -= 128
    elif kind != "ubinary":
        raise ValueError(f"unknown embedding type {kind!r}")
    return packed.tolist()  # type: ignore[no-any-return]


def titan_response(facts: EmbeddingFacts, request: EmbeddingRequest, vector: Sequence[float],
                   token_count: int) -> dict[str, Any]:
    """The Titan V2 or G1 response for one text."""
    body: dict[str, Any] = {"embedding": quantize([vector], "float")[0], "inputTextTokenCount": token_count}
    if facts.body == "titan-v2":
        body["embeddingsByType"] = {
            kind: quantize([vector], "titan-binary" if kind == "binary" else "float")[0] for kind in request.types
        }
    return body


def cohere_response(request: EmbeddingRequest, vectors: Sequence[Sequence[float]], response_id: str) -> dict[str, Any]:
    """The Cohere Embed v3 response: floats as a list, or (with ``embedding_types``) an object by type."""
    if request.by_type:
        embeddings: Any = {kind: quantize(vectors, kind) for kind in request.types}
        response_type = "embeddings_by_type"
    else:
        embeddings = quantize(vectors, "float")
        response_type = "embeddings_floats"
    return {"id": response_id, "embeddings": embeddings, "response_type": response_type, "texts": list(request.texts)}
