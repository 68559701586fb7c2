"""Bounds on the JSON schemas llamarock enforces by constrained decoding, checked before any engine sees one.

A schema that constrains the answer (``outputConfig.textFormat``, or a tool's ``inputSchema`` under toolChoice
``any``/``tool``) becomes a llama.cpp grammar. Some schemas make grammars that crash or stall the server, measured
with llama-cpp-python 0.3.36 on the embedded model (``tests/adversarial/test_engine_inputs.py`` pins the bounds):

- ``maxLength``, ``maxItems`` and a pattern's ``{m,n}`` become one nested optional per unit above the minimum.
  llama.cpp refuses more than 1,000 nesting levels and overflows its stack (SIGSEGV: the whole server dies) from
  about 18,600 levels with an 8 MiB thread stack.
- Optional object properties cost the schema converter super-linear time: one second for one object of ~870.
- Every enum value is a live alternative on each sampling step: 0.14 s per step for 1,000 values, 1 s for ~8,500.
- A pattern whose optional parts are repeated (``(.?){16}``, ``(a{0,40}){0,15}``) is ambiguous: the grammar follows
  every way of splitting the text, 1 s per step at ``(.?){16}``, 33 s at ``(a?){200}``, for every sequence.

:func:`check_enforced_schema` refuses anything beyond the limits below (each well inside the measured failures) with
a ValidationException that names the limit and the fix. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from typing import Any, Final

from llamarock.errors import ValidationException

MAX_SCHEMA_DEPTH: Final = 64  # nesting of the schema's JSON (objects and arrays); a property level adds two
MAX_SCHEMA_CHARS: Final = 100_000  # the schema as compact JSON
MAX_OBJECT_PROPERTIES: Final = 256  # in one object schema
MAX_TOTAL_PROPERTIES: Final = 1024  # in the whole schema
MAX_LENGTH_BOUND: Final = 1000  # minLength / maxLength
MAX_ITEMS_BOUND: Final = 1000  # minItems / maxItems
MAX_ENUM_VALUES: Final = 1000  # enum values and consts, whole schema
MAX_BRANCHES: Final = 1000  # anyOf / oneOf alternatives, whole schema
MAX_PATTERN_CHARS: Final = 1000
MAX_PATTERN_REPEAT: Final = 1000  # m and n of a pattern's {m,n}
MAX_PATTERN_OPTIONALS: Final = 8  # optional or variable parts of a pattern, repeated ones counted once per copy

_SURROGATE: Final = re.compile("[\ud800-\udfff]")
_QUANTIFIER: Final = re.compile(r"\{(\d*)(?:(,)(\d*))?\}")


def lone_surrogate(text: str) -> str | None:
    """The first unpaired UTF-16 surrogate in ``text`` as a ``\\uXXXX`` escape, or None.

    ``json.loads`` turns an escape such as ``"\\ud800"`` into a string no UTF-8 encoder accepts (a valid pair is
    decoded to one character, so any surrogate left in a Python string is unpaired).
    """
    found = _SURROGATE.search(text)
    return f"\\u{ord(found.group()):04x}" if found else None


class _Limit(Exception):
    """One bound a schema breaks: what is wrong and how to fix it."""

    def __init__(self, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix


def check_enforced_schema(schema: Any, subject: str) -> None:
    """Refuse a schema the engine would be asked to enforce when its grammar would be too large, deep or slow.

    ``subject`` names the schema in the message ("The outputConfig.textFormat schema", ...).
    """
    try:
        _check(schema)
    except _Limit as limit:
        raise ValidationException(
            f"{subject} can't be enforced: {limit.problem}. {limit.fix}, and try again."
        ) from None


def _check(schema: Any) -> None:
    properties = enums = branches = 0
    stack: list[tuple[Any, str, int]] = [(schema, "#", 1)]
    while stack:
        node, where, depth = stack.pop()
        if isinstance(node, str):
            surrogate = lone_surrogate(node)
            if surrogate is not None:
                raise _Limit(f"the string at {where} contains the unpaired surrogate {surrogate}, which is not "
                             "valid Unicode", "Remove it, or escape a character beyond U+FFFF as a surrogate pair")
            continue
        if not isinstance(node, dict | list):
            continue
        if depth > MAX_SCHEMA_DEPTH:
            raise _Limit(f"it nests more than {MAX_SCHEMA_DEPTH} levels deep (objects and arrays, at {where})",
                         f"Flatten the schema to at most {MAX_SCHEMA_DEPTH} levels")
        if isinstance(node, list):
            stack.extend((item, f"{where}/{index}", depth + 1) for index, item in enumerate(node))
            continue
        for key, value in node.items():
            surrogate = lone_surrogate(key)
            if surrogate is not None:
                raise _Limit(f"a key at {where} contains the unpaired surrogate {surrogate}, which is not valid "
                             "Unicode", "Remove it, or escape a character beyond U+FFFF as a surrogate pair")
            stack.append((value, f"{where}/{_escape(key)}", depth + 1))
        own = node.get("properties")
        if isinstance(own, dict):
            if len(own) > MAX_OBJECT_PROPERTIES:
                raise _Limit(f"the object at {where} has {len(own)} properties, more than the "
                             f"{MAX_OBJECT_PROPERTIES} one object may have",
                             f"Split it into nested objects of at most {MAX_OBJECT_PROPERTIES} properties")
            properties += len(own)
        for keyword, bound in (("minLength", MAX_LENGTH_BOUND), ("maxLength", MAX_LENGTH_BOUND),
                               ("minItems", MAX_ITEMS_BOUND), ("maxItems", MAX_ITEMS_BOUND)):
            value = node.get(keyword)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > bound:
                raise _Limit(f"{keyword} {_number(value)} at {where} is above {bound}, the largest {keyword} that "
                             "can be enforced", f"Lower {keyword} to {bound} or less, or remove it")
        if isinstance(node.get("enum"), list):
            enums += len(node["enum"])
        if "const" in node:
            enums += 1
        for keyword in ("anyOf", "oneOf"):
            if isinstance(node.get(keyword), list):
                branches += len(node[keyword])
        if isinstance(node.get("pattern"), str):
            _check_pattern(node["pattern"], f"{where}/pattern")
    if properties > MAX_TOTAL_PROPERTIES:
        raise _Limit(f"it has {properties} properties in all, more than {MAX_TOTAL_PROPERTIES}",
                     f"Use at most {MAX_TOTAL_PROPERTIES} properties")
    if enums > MAX_ENUM_VALUES:
        raise _Limit(f"it has {enums} enum and const values in all, more than {MAX_ENUM_VALUES}",
                     f"Use at most {MAX_ENUM_VALUES} enum values (a string with a pattern can stand for a long list)")
    if branches > MAX_BRANCHES:
        raise _Limit(f"it has {branches} anyOf and oneOf alternatives in all, more than {MAX_BRANCHES}",
                     f"Use at most {MAX_BRANCHES} alternatives (or fewer tools with toolChoice any)")
    size = len(json.dumps(schema, separators=(",", ":")))
    if size > MAX_SCHEMA_CHARS:
        raise _Limit(f"it is {size} characters of JSON, more than {MAX_SCHEMA_CHARS}",
                     f"Shorten it to at most {MAX_SCHEMA_CHARS} characters")


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _check_pattern(pattern: str, where: str) -> None:
    if len(pattern) > MAX_PATTERN_CHARS:
        raise _Limit(f"the pattern at {where} is {len(pattern)} characters long, more than {MAX_PATTERN_CHARS}",
                     f"Shorten it to at most {MAX_PATTERN_CHARS} characters")
    cost, repeat = pattern_optionals(pattern)
    if repeat > MAX_PATTERN_REPEAT:
        raise _Limit(f"the pattern at {where} repeats a part {repeat} times, more than {MAX_PATTERN_REPEAT}",
                     f"Use {{m,n}} counts of at most {MAX_PATTERN_REPEAT}, or maxLength")
    if cost > MAX_PATTERN_OPTIONALS:
        raise _Limit(f"the pattern at {where} has {cost} optional or variable-length parts (counting each copy of a "
                     f"repeated optional group), more than the {MAX_PATTERN_OPTIONALS} that keep its grammar "
                     "unambiguous enough to decode quickly",
                     "Simplify the pattern: repeat fixed-length groups ({3}) instead of optional ones ((.?){3}), "
                     "or use maxLength")


def pattern_optionals(pattern: str) -> tuple[int, int]:
    """How ambiguous a pattern's grammar is, and the largest count of its ``{m,n}`` repetitions.

    Ambiguity counts the optional or variable-length parts (``?``, ``*``, ``+``, ``{m,n}``), a group that may match
    nothing repeated ``n`` times counting ``n`` times. Syntax the schema converter rejects is left to it (parsed
    loosely here, never refused).
    """
    # Each frame is a group: its alternatives, each a list of parts (nullable, cost).
    frames: list[list[list[tuple[bool, int]]]] = [[[]]]
    body = pattern[1:] if pattern.startswith("^") else pattern
    body = body[:-1] if body.endswith("$") and not body.endswith("\\$") else body
    i = largest = 0
    while i < len(body):
        char = body[i]
        parts = frames[-1][-1]
        if char == "\\":
            parts.append((False, 0))
            i += 2
            continue
        if char == "[":
            end = i + 1
            while end < len(body) and body[end] != "]":
                end += 2 if body[end] == "\\" else 1
            parts.append((False, 0))
            i = end + 1
            continue
        if char == "(":
            frames.append([[]])
            i += 1
            continue
        if char == ")" and len(frames) > 1:
            group = frames.pop()
            frames[-1][-1].append(_alternatives(group))
            i += 1
            continue
        if char == "|":
            frames[-1].append([])
            i += 1
            continue
        bounds: tuple[int, int | None] | None = None
        step = 1
        if char in "?*+":
            bounds = {"?": (0, 1), "*": (0, None), "+": (1, None)}[char]
        elif char == "{":
            match = _QUANTIFIER.match(body, i)
            if match is not None and (match.group(1) or match.group(3)):
                low = int(match.group(1) or 0)
                high = low if match.group(2) is None else (int(match.group(3)) if match.group(3) else None)
                largest = max(largest, low, high or 0)
                bounds = (low, high)
                step = len(match.group())
        if bounds is not None and parts:
            parts[-1] = _repeated(parts[-1], *bounds)
        elif bounds is None:
            parts.append((False, 0))
        i += step
    while len(frames) > 1:  # unbalanced: the converter refuses it; count what was read
        group = frames.pop()
        frames[-1][-1].append(_alternatives(group))
    return _alternatives(frames[0])[1], largest


def _alternatives(branches: list[list[tuple[bool, int]]]) -> tuple[bool, int]:
    nullable = any(all(n for n, _ in parts) for parts in branches)
    return nullable, sum(cost for parts in branches for _, cost in parts)


def _repeated(part: tuple[bool, int], low: int, high: int | None) -> tuple[bool, int]:
    nullable, cost = part
    copies = high if high is not None else low
    if nullable and copies >= 2:
        # Copies of a part that may match nothing sit side by side: the grammar tracks every split of the text.
        return True, copies * max(cost, 1)
    variable = high is None or high > low
    return nullable or low == 0, cost + (1 if variable else 0)
