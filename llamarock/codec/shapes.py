"""restJson1 request bodies parsed and validated against botocore's input shapes, with AWS's (Coral's) words.

:func:`parse_json_body` walks the operation's input shape and collects every violation, then raises one
:class:`ValidationException` the way AWS does: ``2 validation errors detected: Value '0' at
'inferenceConfig.maxTokens' failed to satisfy constraint: Member must have value greater than or equal to 1; ...``

Style, with the evidence for it (real AWS messages quoted in public issues and code):

- Paths are dotted member names; a list item is ``<list>.<1-based index>.member``
  ("Value 'Count Tool' at 'toolConfig.tools.1.member.toolSpec.name'", Bedrock Converse;
  "'messages.2.member.content.1.member.reasoningContent.reasoningText.text'", Bedrock Converse).
- A map reports its keys and its scalar values once each, at the map's path, listing all of the key or value
  shape's constraints: "Map keys must satisfy constraint: [Member must have length less than or equal to 256, ...]"
  (EventBridge, Lambda, DynamoDB). A structure-valued map item is walked at ``<map>.<key>`` (not confirmed).
- Values: ``'text'`` in single quotes, numbers quoted too, floats as Java prints them
  ("Value '0' at 'inferenceConfig.maxTokens'", "Value '32424.0' at 'inferenceConfig.temperature'", Bedrock),
  ``null`` unquoted, lists and maps as Java's ``toString`` (``[a, b]``, ``{k=v}``), cut at 256 characters.
  A value under a sensitive shape is left out: "Value at 'body'". Bedrock also leaves out values inside content
  and system blocks, which the public model does not mark sensitive ("Value at 'system.1.member.text' ... length
  greater than or equal to 1", "Value at 'messages.3.member.content.2.member.toolUse.name'" next to
  "Value 'feed.list' at 'toolConfig.tools.X.member.toolSpec.name'"), so :data:`_ALSO_SENSITIVE` names them.
- Each broken constraint is its own error; errors come in walk order: URL/header members first, then the body,
  and within a structure its missing required members before its present members in document order.

Type mismatches and bad base64 are reported as ``Member must be of type <type>`` validation errors; unknown
members are ignored, as AWS JSON services do. String ``pattern`` traits (Java regexes, matched whole) are enforced
on every member, as AWS does (a tool named ``my tool!`` is refused): they run on RE2 (google-re2), whose matching
time is linear in the input, because several of the models' patterns backtrack exponentially in Python's ``re``
(``[a-zA-Z0-9](-*[a-zA-Z0-9\\+\\-\\.])*`` on ``a----...!`` takes seconds at 25 characters). RE2 takes Java's
syntax as the models use it (``\\p{L}`` included) but bounds a counted repetition at 1000: a bound above that is
checked as unbounded there (the member's length limit still applies); a pattern RE2 cannot parse is skipped.
"""

from __future__ import annotations

import base64
import json
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from functools import cache
from typing import Any

import re2
from botocore.model import Shape

from llamarock.codec.service_model import RUNTIME, operation_model
from llamarock.errors import SerializationException, ValidationException

MAX_VALUE_CHARS = 256
# JSON nested deeper than this is refused as unparseable, like JSON Python cannot parse at all. Python recurses once
# a level to parse, render or re-serialise a document, within a recursion limit of 1000 frames shared with the
# request's own stack, so the bound keeps every later walk of the body (tool schemas into the prompt, toolUse input
# as JSON, messages quoting a value) far from RecursionError.
MAX_JSON_DEPTH = 256
# An escaped UTF-16 surrogate (\ud800-\udfff): only a body with one can decode to a string that is not Unicode.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")

_ALSO_SENSITIVE: dict[str, frozenset[str]] = {RUNTIME: frozenset({"ContentBlock", "SystemContentBlock"})}
_TYPE_WORDS = {"long": "integer", "float": "number", "double": "number"}
_INT_LIMITS = {"integer": 2**31, "long": 2**63}


class _WrongType(Exception):
    """A value whose JSON type does not fit its shape."""


def parse_json_body(
    operation: str,
    body: bytes,
    *,
    service: str = RUNTIME,
    location_values: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The operation's input params: ``location_values`` (URL, header, query members) plus the body's members.

    Member names stay as the model spells them; blobs come back as ``bytes`` and timestamps as UTC datetimes.
    A blob payload member (InvokeModel's ``body``) receives the raw body, checked only for its length.
    """
    shape = operation_model(operation, service).input_shape
    if shape is None:
        return {}
    walker = _Walker(_ALSO_SENSITIVE.get(service, frozenset()))
    params: dict[str, Any] = {}
    located = {name: m for name, m in shape.members.items() if m.serialization.get("location")}
    walker.from_url = True
    for name, member in located.items():
        value = (location_values or {}).get(name)
        if value is None:
            if name in shape.required_members:
                walker.fail(None, name, "Member must not be null", walker.is_sensitive(member))
            continue
        params[name] = walker.walk(member, value, name, False)
    walker.from_url = False
    payload = shape.serialization.get("payload")
    if payload is not None and shape.members[payload].type_name == "blob":
        walker.check(shape.members[payload], body, body, payload, walker.is_sensitive(shape.members[payload]))
        params[payload] = body
    else:
        document = _load(body)
        if payload is not None:
            params[payload] = walker.walk(shape.members[payload], document, payload, False)
        else:
            body_members = {n: m for n, m in shape.members.items() if n not in located}
            params.update(walker.walk_structure(shape, document, "", False, body_members))
    walker.raise_errors()
    return params


def _load(body: bytes) -> Any:
    if not body.strip():
        return {}
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SerializationException(
            f"Unable to parse request body: byte {exc.start} is not valid UTF-8. Send a JSON object."
        ) from None
    try:
        document = json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:
        raise SerializationException(f"Unable to parse request body: {exc}. Send a JSON object.") from None
    except RecursionError:
        raise SerializationException(_too_deep()) from None
    if not isinstance(document, dict):
        kind = type(document).__name__ if document is not None else "null"
        raise SerializationException(f"Unable to parse request body: it is a JSON {kind}. Send a JSON object.")
    if text.count("{") + text.count("[") > MAX_JSON_DEPTH or _SURROGATE_ESCAPE.search(text):
        _check_document(document, check_strings=_SURROGATE_ESCAPE.search(text) is not None)
    return document


def _too_deep() -> str:
    return (f"Unable to parse request body: it nests objects and arrays more than {MAX_JSON_DEPTH} levels deep. "
            f"Send a JSON object nested at most {MAX_JSON_DEPTH} levels deep.")


def _check_document(document: dict[str, Any], *, check_strings: bool) -> None:
    """Refuse a body nested deeper than MAX_JSON_DEPTH (SerializationException) or holding a string that is not
    Unicode: ``json.loads`` decodes an unpaired ``\\ud800`` escape into a string no UTF-8 encoder accepts."""
    stack: list[tuple[Any, str, int]] = [(document, "", 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, str):
            if check_strings and _SURROGATE.search(node):
                _unpaired(node, path)
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_JSON_DEPTH:
            raise SerializationException(_too_deep())
        if isinstance(node, list):
            stack.extend((item, f"{path}.{index}.member", depth + 1) for index, item in enumerate(node, 1))
            continue
        for key, item in node.items():
            if check_strings and _SURROGATE.search(key):
                _unpaired(key, path)
            stack.append((item, _join(path, key), depth + 1))


def _unpaired(text: str, path: str) -> None:
    found = _SURROGATE.search(text)
    assert found is not None
    raise ValidationException(
        f"1 validation error detected: Value at '{path or 'body'}' failed to satisfy constraint: Member must be "
        f"valid Unicode text, but it contains the unpaired surrogate \\u{ord(found.group()):04x}. Send the text as "
        "UTF-8 (a character beyond U+FFFF escaped as a surrogate pair)."
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


class _Walker:
    def __init__(self, also_sensitive: frozenset[str]) -> None:
        self.also_sensitive = also_sensitive
        self.errors: list[str] = []
        self.from_url = False

    def is_sensitive(self, shape: Shape) -> bool:
        return bool(shape.metadata.get("sensitive")) or shape.name in self.also_sensitive

    def fail(self, value: Any, path: str, constraint: str, sensitive: bool) -> None:
        if sensitive:
            shown = "Value"
        elif value is None:
            shown = "Value null"
        else:
            text = _java_text(value)
            shown = f"Value '{text[:MAX_VALUE_CHARS]}...'" if len(text) > MAX_VALUE_CHARS else f"Value '{text}'"
        self.errors.append(f"{shown} at '{path}' failed to satisfy constraint: {constraint}")

    def raise_errors(self) -> None:
        if self.errors:
            count = len(self.errors)
            head = "1 validation error" if count == 1 else f"{count} validation errors"
            raise ValidationException(f"{head} detected: {'; '.join(self.errors)}")

    def walk(self, shape: Shape, value: Any, path: str, sensitive: bool) -> Any:
        sensitive = sensitive or self.is_sensitive(shape)
        if shape.metadata.get("document"):
            return value
        kind = shape.type_name
        if kind == "structure":
            return self.walk_structure(shape, value, path, sensitive, shape.members)
        if kind == "list":
            return self.walk_list(shape, value, path, sensitive)
        if kind == "map":
            return self.walk_map(shape, value, path, sensitive)
        try:
            parsed = self.convert(shape, value)
        except _WrongType:
            self.fail(value, path, _type_error(shape), sensitive)
            return None
        self.check(shape, value, parsed, path, sensitive)
        return parsed

    def check(self, shape: Shape, value: Any, parsed: Any, path: str, sensitive: bool) -> None:
        shown = parsed if isinstance(parsed, int | float) else value
        for constraint in self.violations(shape, parsed):
            self.fail(shown, path, constraint, sensitive)

    def walk_structure(
        self, shape: Shape, value: Any, path: str, sensitive: bool, members: Mapping[str, Shape]
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(value, path, "Member must be of type structure", sensitive)
            return {}
        for name in shape.required_members:
            if name in members and value.get(name) is None:
                member_sensitive = sensitive or self.is_sensitive(members[name])
                self.fail(None, _join(path, name), "Member must not be null", member_sensitive)
        if shape.metadata.get("union") and sum(value.get(name) is not None for name in members) != 1:
            self.fail(value, path, "Member must have exactly one member set", sensitive)
        return {
            key: self.walk(members[key], item, _join(path, key), sensitive)
            for key, item in value.items()
            if key in members and item is not None
        }

    def walk_list(self, shape: Shape, value: Any, path: str, sensitive: bool) -> list[Any]:
        if self.from_url and isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.fail(value, path, "Member must be of type list", sensitive)
            return []
        self.check(shape, value, value, path, sensitive)
        items = []
        for index, item in enumerate(value, 1):
            item_path = f"{path}.{index}.member"
            if item is None:
                self.fail(None, item_path, "Member must not be null", sensitive)
            else:
                items.append(self.walk(shape.member, item, item_path, sensitive))
        return items

    def walk_map(self, shape: Shape, value: Any, path: str, sensitive: bool) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(value, path, "Member must be of type map", sensitive)
            return {}
        self.check(shape, value, value, path, sensitive)
        scalar_values = shape.value.type_name not in ("structure", "list", "map")
        bad_keys = bad_values = False
        out: dict[str, Any] = {}
        for key, item in value.items():
            bad_keys = bad_keys or bool(self.violations(shape.key, key))
            if item is None:
                continue
            if not scalar_values:
                out[key] = self.walk(shape.value, item, f"{path}.{key}", sensitive)
                continue
            try:
                out[key] = self.convert(shape.value, item)
            except _WrongType:
                self.fail(item, f"{path}.{key}", _type_error(shape.value), sensitive)
                continue
            bad_values = bad_values or bool(self.violations(shape.value, out[key]))
        for bad, aspect, part in ((bad_keys, "keys", shape.key), (bad_values, "value", shape.value)):
            if bad:
                self.fail(value, path, f"Map {aspect} must satisfy constraint: [{', '.join(_rules(part))}]", sensitive)
        return out

    def convert(self, shape: Shape, value: Any) -> Any:
        """The value as Python holds it (``bytes``, ``datetime``, ``float``...), or :class:`_WrongType`."""
        kind = shape.type_name
        text = self.from_url and isinstance(value, str)
        if kind == "string" and isinstance(value, str):
            return value
        if kind == "boolean":
            if isinstance(value, bool):
                return value
            if text and value in ("true", "false"):
                return value == "true"
        elif kind in _INT_LIMITS:
            number = _number(value, text)
            if isinstance(number, float) and number.is_integer():
                number = int(number)
            if isinstance(number, int) and -_INT_LIMITS[kind] <= number < _INT_LIMITS[kind]:
                return number
        elif kind in ("float", "double"):
            number = _number(value, text)
            if number is not None:
                return float(number)
        elif kind == "blob" and isinstance(value, str | bytes):
            try:
                return value if isinstance(value, bytes) else base64.b64decode(value, validate=True)
            except ValueError:  # binascii.Error, and non-ASCII text that cannot be base64 at all
                pass
        elif kind == "timestamp":
            stamp = _timestamp(value)
            if stamp is not None:
                return stamp
        raise _WrongType

    def violations(self, shape: Shape, value: Any) -> list[str]:
        """The constraints of ``shape`` that a well-typed ``value`` breaks, in AWS's words."""
        meta = shape.metadata
        found: list[str] = []
        if isinstance(value, int | float) and not isinstance(value, bool):
            measure, what = value, "value"
        elif isinstance(value, str | bytes | list | dict):
            measure, what = len(value), "length"
        else:
            return found
        if "max" in meta and measure > meta["max"]:
            found.append(f"Member must have {what} less than or equal to {meta['max']}")
        if "min" in meta and measure < meta["min"]:
            found.append(f"Member must have {what} greater than or equal to {meta['min']}")
        if isinstance(value, str):
            pattern = _compiled(meta["pattern"]) if "pattern" in meta else None
            if pattern is not None and pattern.fullmatch(value) is None:
                found.append(f"Member must satisfy regular expression pattern: {meta['pattern']}")
            enum = meta.get("enum")
            if enum and value not in enum:
                found.append(f"Member must satisfy enum value set: [{', '.join(enum)}]")
        return found


def _type_error(shape: Shape) -> str:
    return f"Member must be of type {_TYPE_WORDS.get(shape.type_name, shape.type_name)}"


def _rules(shape: Shape) -> list[str]:
    """Every constraint of a shape, as Coral lists them for a map's keys or values."""
    meta = shape.metadata
    what = "value" if shape.type_name in ("integer", "long", "float", "double") else "length"
    rules = [f"Member must have {what} less than or equal to {meta['max']}"] if "max" in meta else []
    rules += [f"Member must have {what} greater than or equal to {meta['min']}"] if "min" in meta else []
    rules += [f"Member must satisfy regular expression pattern: {meta['pattern']}"] if "pattern" in meta else []
    return rules + ([f"Member must satisfy enum value set: [{', '.join(meta['enum'])}]"] if "enum" in meta else [])


def _number(value: Any, text: bool) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if text:
        for parse in (int, float):
            try:
                number = parse(value)
            except ValueError:
                continue
            return number if math.isfinite(number) else None
    return None


def _timestamp(value: Any) -> datetime | None:
    """Epoch seconds, ISO-8601, or (from a header) an HTTP date; a naive time is taken as UTC."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return datetime.fromtimestamp(value, UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if not isinstance(value, str):
        return None
    for parse in (datetime.fromisoformat, lambda s: datetime.fromtimestamp(float(s), UTC), parsedate_to_datetime):
        try:
            stamp = parse(value)
        except (ValueError, TypeError, OverflowError, OSError):
            continue
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)
    return None


_LONG_REPEAT = re.compile(r"\{(\d+),(\d{4,})\}")
# bedrock-agent's TaggableResourcesArn (and others) write the digit class as "/d" ("arn:...:/d{12}:..."), which no
# real ARN matches; AWS evidently does not apply it. Read "/d" before a quantifier as "\d", as intended.
_SLASH_DIGIT = re.compile(r"/d(?=[{+*])")


@cache
def _compiled(pattern: str) -> Any:
    """A model pattern compiled by RE2 (a ``re2._Regexp``), or None when RE2 cannot parse it."""
    options = re2.Options()
    options.log_errors = False
    loosened = _LONG_REPEAT.sub(lambda m: "{" + m.group(1) + ",}" if int(m.group(2)) > 1000 else m.group(0), pattern)
    loosened = _SLASH_DIGIT.sub(r"\\d", loosened)
    try:
        return re2.compile(loosened, options)
    except re2.error:
        return None


def _java_text(value: Any) -> str:
    """A JSON value as Java's ``toString`` prints it, the way AWS echoes values in its messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_java_text(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key}={_java_text(item)}" for key, item in value.items()) + "}"
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    return str(value)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name
