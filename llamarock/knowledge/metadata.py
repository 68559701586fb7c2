"""Metadata of knowledge-base documents: ``<file>.metadata.json`` sidecars and Bedrock's reserved keys.

A sidecar sits beside its file in the data source (``report.pdf`` -> ``report.pdf.metadata.json``) and is at most
10 KB. Two forms, as Bedrock documents them; both may be mixed in one file::

    {"metadataAttributes": {"genre": "drama", "year": 1994, "public": true, "tags": ["a", "b"]}}

    {"metadataAttributes": {"genre": {"value": {"type": "STRING", "stringValue": "drama"},
                                      "includeForEmbedding": true}}}

The typed form's ``type`` is STRING, NUMBER, BOOLEAN or STRING_LIST with ``stringValue``, ``numberValue``,
``booleanValue`` or ``stringListValue``. ``includeForEmbedding`` (default false) asks that the attribute be part
of the embedded text too: :func:`parse_sidecar_full` returns those keys.

Bedrock adds reserved keys to every retrieved chunk's metadata: the source's URI, the chunk's id and the data
source's id (and the page number for PDFs); they are filterable like any other key.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

MetadataValue = str | int | float | bool | list[str]
Metadata = dict[str, MetadataValue]

SIDECAR_SUFFIX = ".metadata.json"
SIDECAR_MAX_BYTES = 10 * 1024
MAX_ATTRIBUTES = 50  # Bedrock's limit of inline attributes per document; applied to sidecars too
SOURCE_URI_KEY = "x-amz-bedrock-kb-source-uri"
CHUNK_ID_KEY = "x-amz-bedrock-kb-chunk-id"
DATA_SOURCE_ID_KEY = "x-amz-bedrock-kb-data-source-id"
PAGE_NUMBER_KEY = "x-amz-bedrock-kb-document-page-number"
RESERVED_PREFIX = "x-amz-bedrock-kb-"

_TYPED_FIELDS = {
    "STRING": "stringValue",
    "NUMBER": "numberValue",
    "BOOLEAN": "booleanValue",
    "STRING_LIST": "stringListValue",
}


class MetadataError(ValueError):
    """A sidecar (or inline attribute list) is not valid; the message says what to fix."""


@dataclass(frozen=True)
class Sidecar:
    attributes: Metadata
    include_for_embedding: tuple[str, ...]


def is_sidecar(name: str) -> bool:
    return name.endswith(SIDECAR_SUFFIX)


def sidecar_for(name: str) -> str:
    """The sidecar's name for a document's name (``a/b.pdf`` -> ``a/b.pdf.metadata.json``)."""
    return name + SIDECAR_SUFFIX


def reserved(source_uri: str, data_source_id: str) -> Metadata:
    """The reserved keys Bedrock puts on every chunk of a document (the chunk id is added by the store)."""
    return {SOURCE_URI_KEY: source_uri, DATA_SOURCE_ID_KEY: data_source_id}


def parse_sidecar(data: bytes) -> Metadata:
    """The attributes of a ``.metadata.json`` file, plain or typed form; MetadataError says what is wrong."""
    return parse_sidecar_full(data).attributes


def parse_sidecar_full(data: bytes) -> Sidecar:
    if len(data) > SIDECAR_MAX_BYTES:
        raise MetadataError(f"the metadata file is {len(data)} bytes; the limit is {SIDECAR_MAX_BYTES} bytes (10 KB)")
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MetadataError(f"the metadata file is not valid UTF-8 JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("metadataAttributes"), dict):
        raise MetadataError('the metadata file must be a JSON object with a "metadataAttributes" object')
    extra = sorted(set(document) - {"metadataAttributes"})
    if extra:
        raise MetadataError(f"the metadata file has unknown members {extra}; only metadataAttributes is allowed")
    raw: dict[str, Any] = document["metadataAttributes"]
    if len(raw) > MAX_ATTRIBUTES:
        raise MetadataError(f"the metadata file has {len(raw)} attributes; at most {MAX_ATTRIBUTES} are allowed")
    attributes: Metadata = {}
    embed: list[str] = []
    for key, value in raw.items():
        check_key(key)
        if isinstance(value, dict):
            attributes[key], include = _typed(key, value)
            if include:
                embed.append(key)
        else:
            attributes[key] = plain_value(key, value)
    return Sidecar(attributes, tuple(embed))


def check_key(key: str) -> None:
    if not key or len(key) > 100:
        raise MetadataError(f"metadata key {key[:40]!r} must be 1 to 100 characters")
    if key.startswith(RESERVED_PREFIX):
        raise MetadataError(f"metadata key {key!r} is reserved by Bedrock (keys starting {RESERVED_PREFIX!r})")


def plain_value(key: str, value: Any) -> MetadataValue:
    """A plain-form value: string, number, boolean, or a list of strings."""
    if isinstance(value, bool | str):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise MetadataError(f"metadata {key!r}: numbers must be finite")
        return value
    if isinstance(value, list):
        if not all(isinstance(item, str) for item in value):
            raise MetadataError(f"metadata {key!r}: a list may hold only strings (a STRING_LIST)")
        return list(value)
    raise MetadataError(
        f"metadata {key!r}: the value must be a string, number, boolean or list of strings, not {type(value).__name__}"
    )


def _typed(key: str, entry: Mapping[str, Any]) -> tuple[MetadataValue, bool]:
    unknown = sorted(set(entry) - {"value", "includeForEmbedding"})
    if unknown or not isinstance(entry.get("value"), dict):
        raise MetadataError(
            f'metadata {key!r}: the typed form is {{"value": {{"type": ..., "<type>Value": ...}}, '
            f'"includeForEmbedding": true|false}}' + (f"; unknown members {unknown}" if unknown else "")
        )
    include = entry.get("includeForEmbedding", False)
    if not isinstance(include, bool):
        raise MetadataError(f"metadata {key!r}: includeForEmbedding must be true or false")
    typed: dict[str, Any] = entry["value"]
    kind = typed.get("type")
    if kind not in _TYPED_FIELDS:
        raise MetadataError(f"metadata {key!r}: type must be one of {', '.join(_TYPED_FIELDS)}, not {kind!r}")
    member = _TYPED_FIELDS[kind]
    if member not in typed:
        raise MetadataError(f"metadata {key!r}: type {kind} needs {member}")
    value = typed[member]
    ok = {
        "STRING": isinstance(value, str),
        "NUMBER": isinstance(value, int | float) and not isinstance(value, bool),
        "BOOLEAN": isinstance(value, bool),
        "STRING_LIST": isinstance(value, list) and all(isinstance(v, str) for v in value),
    }[kind]
    if not ok:
        raise MetadataError(f"metadata {key!r}: {member} does not hold a {kind} value")
    return plain_value(key, value), include


def embedding_prefix(attributes: Mapping[str, MetadataValue], keys: tuple[str, ...]) -> str:
    """Text put before a chunk's text when embedding, for attributes marked includeForEmbedding."""
    parts = []
    for key in keys:
        value = attributes[key]
        shown = ", ".join(value) if isinstance(value, list) else json.dumps(value) if isinstance(value, bool) else value
        parts.append(f"{key}: {shown}")
    return "\n".join(parts) + "\n\n" if parts else ""
