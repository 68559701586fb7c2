"""Bedrock's RetrievalFilter: validation, a reference evaluator, and compilation to SQLite and PostgreSQL SQL.

Every operator of botocore's bedrock-agent-runtime model. The semantics (the same in :func:`matches` and in both
compiled forms; the tests check the three agree):

- ``equals`` / ``notEquals``: the attribute is a scalar of the value's kind (string, number, boolean) and equal;
  ``notEquals`` is its negation, so a document without the key matches it (as Bedrock documents).
- ``greaterThan`` / ``greaterThanOrEquals`` / ``lessThan`` / ``lessThanOrEquals``: numbers compare as numbers,
  strings by code point (ISO dates order correctly); a value of another kind never matches.
- ``in`` / ``notIn``: the attribute equals one of the list's values (``notIn``: none, or the key is absent).
- ``startsWith`` / ``stringContains``: a string attribute that starts with / contains the value, or a string list
  with a member that does.
- ``listContains``: a string-list attribute with the value as a member.
- ``andAll`` / ``orAll``: 2 or more filters, all / any.

Kinds never mix: the string "3" does not equal the number 3, and true is not 1.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llamarock.knowledge.metadata import MetadataValue

COMPARISONS = ("greaterThan", "greaterThanOrEquals", "lessThan", "lessThanOrEquals")
SCALAR_OPERATORS = ("equals", "notEquals", *COMPARISONS, "startsWith", "listContains", "stringContains")
LIST_OPERATORS = ("in", "notIn")
GROUP_OPERATORS = ("andAll", "orAll")
OPERATORS = (*SCALAR_OPERATORS, *LIST_OPERATORS, *GROUP_OPERATORS)
_SQL_COMPARE = {"greaterThan": ">", "greaterThanOrEquals": ">=", "lessThan": "<", "lessThanOrEquals": "<="}
MAX_DEPTH = 5
MAX_IN_VALUES = 1000

Scalar = str | int | float | bool


@dataclass(frozen=True)
class Condition:
    op: str
    key: str
    value: Any


@dataclass(frozen=True)
class Group:
    op: str
    members: tuple[Condition | Group, ...]


Filter = Condition | Group


def validate(raw: Mapping[str, Any] | Filter, path: str = "filter", depth: int = 0) -> Filter:
    """The filter as a tree; ValueError with the offending path and how to fix it when it is not valid."""
    if isinstance(raw, Condition | Group):
        return raw
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path} must be an object with one operator, one of: {', '.join(OPERATORS)}")
    present = [op for op in raw if raw[op] is not None]
    unknown = [op for op in present if op not in OPERATORS]
    if unknown:
        raise ValueError(f"{path} has unknown operator {unknown[0]!r}; the operators are: {', '.join(OPERATORS)}")
    if len(present) != 1:
        found = f"found {len(present)} ({', '.join(present)})" if present else "found none"
        raise ValueError(f"{path} must have exactly one operator, {found}")
    op = present[0]
    body = raw[op]
    where = f"{path}.{op}"
    if op in GROUP_OPERATORS:
        if not isinstance(body, list) or len(body) < 2:
            raise ValueError(f"{where} must be a list of at least 2 filters (use the single filter alone otherwise)")
        if depth >= MAX_DEPTH:
            raise ValueError(f"{where}: filters nest at most {MAX_DEPTH} levels deep")
        return Group(op, tuple(validate(m, f"{where}[{i}]", depth + 1) for i, m in enumerate(body)))
    if not isinstance(body, Mapping) or set(body) - {"key", "value"} or "key" not in body or "value" not in body:
        raise ValueError(f'{where} must be {{"key": <string>, "value": <value>}}')
    key = body["key"]
    if not isinstance(key, str) or not 1 <= len(key) <= 100:
        raise ValueError(f"{where}.key must be a string of 1 to 100 characters")
    return Condition(op, key, _checked_value(op, body["value"], f"{where}.value"))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, str | bool) or (_is_number(value) and math.isfinite(value))


def _checked_value(op: str, value: Any, where: str) -> Any:
    if op in LIST_OPERATORS:
        if not isinstance(value, list) or not all(_is_scalar(v) for v in value):
            raise ValueError(f"{where} must be a list of strings, numbers or booleans for {op}")
        if len(value) > MAX_IN_VALUES:
            raise ValueError(f"{where} has {len(value)} values; {op} takes at most {MAX_IN_VALUES}")
        return list(value)
    if op in COMPARISONS:
        if not (_is_number(value) and math.isfinite(value)) and not isinstance(value, str):
            raise ValueError(f"{where} must be a number (or a string, compared by code point) for {op}")
        return value
    if op in ("startsWith", "stringContains"):
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string for {op}")
        return value
    if not _is_scalar(value):
        raise ValueError(f"{where} must be a string, number or boolean for {op}")
    return value


# --- the reference evaluator ------------------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return _is_number(a) and _is_number(b) and a == b


def _compare(op: str, attribute: Any, value: Any) -> bool:
    if _is_number(value) and not _is_number(attribute):
        return False
    if isinstance(value, str) and not isinstance(attribute, str):
        return False
    result: bool = {
        "greaterThan": attribute > value,
        "greaterThanOrEquals": attribute >= value,
        "lessThan": attribute < value,
        "lessThanOrEquals": attribute <= value,
    }[op]
    return result


def matches(flt: Filter | Mapping[str, Any], metadata: Mapping[str, MetadataValue]) -> bool:
    """Whether a chunk with this metadata passes the filter (the semantics the stores compile)."""
    node = validate(flt)
    if isinstance(node, Group):
        results = (matches(m, metadata) for m in node.members)
        return all(results) if node.op == "andAll" else any(results)
    present = node.key in metadata
    attribute = metadata.get(node.key)
    op, value = node.op, node.value
    if op == "equals":
        return present and _same(attribute, value)
    if op == "notEquals":
        return not (present and _same(attribute, value))
    if op == "in":
        return present and any(_same(attribute, v) for v in value)
    if op == "notIn":
        return not (present and any(_same(attribute, v) for v in value))
    if not present:
        return False
    if op in COMPARISONS:
        return _compare(op, attribute, value)
    members = attribute if isinstance(attribute, list) else [attribute]
    if op == "listContains":
        return isinstance(attribute, list) and any(_same(m, value) for m in attribute)
    if op == "startsWith":
        return any(isinstance(m, str) and m.startswith(value) for m in members)
    return any(isinstance(m, str) and value in m for m in members)  # stringContains


# --- SQLite: json_each over a JSON text column ------------------------------------------------------------------
def _sqlite_equal(alias: str, value: Any) -> tuple[str, list[Any]]:
    if isinstance(value, bool):
        return f"{alias}.type = '{'true' if value else 'false'}'", []
    if isinstance(value, str):
        return f"({alias}.type = 'text' AND {alias}.value = ?)", [value]
    return f"({alias}.type IN ('integer', 'real') AND {alias}.value = ?)", [value]


def to_sqlite(flt: Filter, column: str = "c.metadata") -> tuple[str, list[Any]]:
    """A SQL boolean expression over ``column`` (JSON text) and its parameters (qmark style)."""
    if isinstance(flt, Group):
        parts: list[str] = []
        grouped: list[Any] = []
        for member in flt.members:
            sql, p = to_sqlite(member, column)
            parts.append(sql)
            grouped.extend(p)
        return "(" + (" AND " if flt.op == "andAll" else " OR ").join(parts) + ")", grouped
    op, value = flt.op, flt.value
    params: list[Any] = [flt.key]
    if op in ("equals", "notEquals"):
        pred, p = _sqlite_equal("j", value)
        params += p
    elif op in ("in", "notIn"):
        preds = []
        for v in value:
            pred, p = _sqlite_equal("j", v)
            preds.append(pred)
            params += p
        pred = "(" + " OR ".join(preds) + ")" if preds else "0"
    elif op in COMPARISONS:
        kind = "'text'" if isinstance(value, str) else "'integer', 'real'"
        pred = f"(j.type IN ({kind}) AND j.value {_SQL_COMPARE[op]} ?)"
        params.append(value)
    elif op == "listContains":
        inner, p = _sqlite_equal("e", value)
        pred = f"(j.type = 'array' AND EXISTS (SELECT 1 FROM json_each(j.value) e WHERE {inner}))"
        params += p
    else:
        test = "substr({v}, 1, ?) = ?" if op == "startsWith" else "instr({v}, ?) > 0"
        p = [len(value), value] if op == "startsWith" else [value]
        pred = (
            f"((j.type = 'text' AND {test.format(v='j.value')}) OR (j.type = 'array' AND EXISTS "
            f"(SELECT 1 FROM json_each(j.value) e WHERE e.type = 'text' AND {test.format(v='e.value')})))"
        )
        params += p + p
    sql = f"EXISTS (SELECT 1 FROM json_each({column}) j WHERE j.key = ? AND {pred})"
    return (f"NOT {sql}" if op in ("notEquals", "notIn") else sql), params


# --- PostgreSQL: jsonb operators (psycopg's %s placeholders) -----------------------------------------------------
_ELEMENT_TEXT = "(e #>> '{}')"


def to_postgres(flt: Filter, column: str = "c.metadata") -> tuple[str, list[Any]]:
    """A SQL boolean expression over ``column`` (jsonb) and its parameters (psycopg style)."""
    if isinstance(flt, Group):
        parts: list[str] = []
        grouped: list[Any] = []
        for member in flt.members:
            sql, p = to_postgres(member, column)
            parts.append(sql)
            grouped.extend(p)
        return "(" + (" AND " if flt.op == "andAll" else " OR ").join(parts) + ")", grouped
    op, key, value = flt.op, flt.key, flt.value
    attr = f"({column} -> %s)"
    text = f"({column} ->> %s)"
    if op in ("equals", "notEquals"):
        sql = f"COALESCE({attr} = %s::jsonb, false)"
        params: list[Any] = [key, json.dumps(value)]
        return (f"NOT {sql}" if op == "notEquals" else sql), params
    if op in ("in", "notIn"):
        sql = f"COALESCE({attr} = ANY(%s::jsonb[]), false)"
        params = [key, [json.dumps(v) for v in value]]
        return (f"NOT {sql}" if op == "notIn" else sql), params
    if op in COMPARISONS:
        if isinstance(value, str):
            return (
                f"(CASE WHEN jsonb_typeof({attr}) = 'string' THEN {text} COLLATE \"C\" {_SQL_COMPARE[op]} %s "
                "ELSE false END)",
                [key, key, value],
            )
        return (
            f"(CASE WHEN jsonb_typeof({attr}) = 'number' THEN {text}::numeric {_SQL_COMPARE[op]} %s::numeric "
            "ELSE false END)",
            [key, key, repr(value)],
        )
    if op == "listContains":
        return (
            f"(CASE WHEN jsonb_typeof({attr}) = 'array' THEN {attr} @> %s::jsonb ELSE false END)",
            [key, key, json.dumps([value])],
        )
    test = "starts_with({v}, %s)" if op == "startsWith" else "strpos({v}, %s) > 0"
    return (
        f"(CASE jsonb_typeof({attr}) WHEN 'string' THEN {test.format(v=text)} WHEN 'array' THEN EXISTS "
        f"(SELECT 1 FROM jsonb_array_elements({attr}) e WHERE jsonb_typeof(e) = 'string' AND "
        f"{test.format(v=_ELEMENT_TEXT)}) ELSE false END)",
        [key, key, value, key, value],
    )
