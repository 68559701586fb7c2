"""IAM identity-based policies, the subset llamarock evaluates.

``Version``, ``Statement`` (one or a list) with ``Sid``, ``Effect``, ``Action``/``NotAction``,
``Resource``/``NotResource`` (``*`` and ``?`` wildcards) and ``Condition`` with the String*, Arn*, IpAddress,
NotIpAddress, Date*, Numeric*, Bool and Null operators (each also as ``...IfExists``). Evaluation is IAM's: an
explicit Deny wins, else any Allow allows, else the request is implicitly denied.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from llamarock.errors import PolicyError

VERSIONS = ("2012-10-17", "2008-10-17")
Decision = Literal["Allow", "Deny", "ImplicitDeny"]

FULL_ACCESS: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["bedrock:*", "s3:*"], "Resource": "*"}],
}
# The ``dev`` principal of ``--auth dev`` may do anything, llamarock's own operations (usage, quotas) included.
DEV_ACCESS: dict[str, Any] = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": ["bedrock:*", "s3:*", "llamarock:*"], "Resource": "*"}],
}


def wildcard(pattern: str, ignore_case: bool = False) -> re.Pattern[str]:
    """IAM's ``*`` (any run of characters) and ``?`` (one character); everything else literal."""
    body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.compile(f"^{body}$", re.DOTALL | (re.IGNORECASE if ignore_case else 0))


def _date(value: str) -> datetime:
    text = value.strip()
    if re.fullmatch(r"-?\d+", text):
        return datetime.fromtimestamp(int(text), UTC)
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _number(value: str) -> float:
    return float(value)


def _network(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    return ipaddress.ip_network(value.strip(), strict=False)


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered not in ("true", "false"):
        raise ValueError(f"{value!r} is not true or false")
    return lowered == "true"


# operator -> (parse a policy value, test(request value, parsed policy value), negated)
_Test = Callable[[str, Any], bool]


def _ip_in(request: str, network: Any) -> bool:
    try:
        return ipaddress.ip_address(request) in network
    except ValueError:
        return False


def _cmp(parse: Callable[[str], Any], test: Callable[[Any, Any], bool]) -> _Test:
    def run(request: str, policy: Any) -> bool:
        try:
            return test(parse(request), policy)
        except (ValueError, TypeError, OverflowError):
            return False

    return run


OPERATORS: dict[str, tuple[Callable[[str], Any], _Test, bool]] = {
    "StringEquals": (str, lambda r, p: r == p, False),
    "StringNotEquals": (str, lambda r, p: r == p, True),
    "StringEqualsIgnoreCase": (str.lower, lambda r, p: r.lower() == p, False),
    "StringNotEqualsIgnoreCase": (str.lower, lambda r, p: r.lower() == p, True),
    "StringLike": (wildcard, lambda r, p: bool(p.match(r)), False),
    "StringNotLike": (wildcard, lambda r, p: bool(p.match(r)), True),
    "ArnEquals": (wildcard, lambda r, p: bool(p.match(r)), False),
    "ArnLike": (wildcard, lambda r, p: bool(p.match(r)), False),
    "ArnNotEquals": (wildcard, lambda r, p: bool(p.match(r)), True),
    "ArnNotLike": (wildcard, lambda r, p: bool(p.match(r)), True),
    "IpAddress": (_network, _ip_in, False),
    "NotIpAddress": (_network, _ip_in, True),
    "DateEquals": (_date, _cmp(_date, lambda r, p: r == p), False),
    "DateNotEquals": (_date, _cmp(_date, lambda r, p: r == p), True),
    "DateLessThan": (_date, _cmp(_date, lambda r, p: r < p), False),
    "DateLessThanEquals": (_date, _cmp(_date, lambda r, p: r <= p), False),
    "DateGreaterThan": (_date, _cmp(_date, lambda r, p: r > p), False),
    "DateGreaterThanEquals": (_date, _cmp(_date, lambda r, p: r >= p), False),
    "NumericEquals": (_number, _cmp(_number, lambda r, p: r == p), False),
    "NumericNotEquals": (_number, _cmp(_number, lambda r, p: r == p), True),
    "NumericLessThan": (_number, _cmp(_number, lambda r, p: r < p), False),
    "NumericLessThanEquals": (_number, _cmp(_number, lambda r, p: r <= p), False),
    "NumericGreaterThan": (_number, _cmp(_number, lambda r, p: r > p), False),
    "NumericGreaterThanEquals": (_number, _cmp(_number, lambda r, p: r >= p), False),
    "Bool": (_bool, _cmp(_bool, lambda r, p: r == p), False),
}


@dataclass(frozen=True)
class Condition:
    operator: str
    key: str  # lower-cased: condition keys are case-insensitive
    values: tuple[Any, ...]
    if_exists: bool

    def holds(self, context: Mapping[str, str]) -> bool:
        value = context.get(self.key)
        if self.operator == "Null":
            return bool((value is None) == self.values[0])
        if value is None:
            return self.if_exists or OPERATORS[self.operator][2]
        _, test, negated = OPERATORS[self.operator]
        matched = any(test(value, v) for v in self.values)
        return not matched if negated else matched


@dataclass(frozen=True)
class Statement:
    effect: Literal["Allow", "Deny"]
    actions: tuple[re.Pattern[str], ...]
    not_action: bool
    resources: tuple[re.Pattern[str], ...]
    not_resource: bool
    conditions: tuple[Condition, ...]

    def applies(self, action: str, resource: str, context: Mapping[str, str]) -> bool:
        if any(p.match(action) for p in self.actions) == self.not_action:
            return False
        if any(p.match(resource) for p in self.resources) == self.not_resource:
            return False
        return all(c.holds(context) for c in self.conditions)


@dataclass(frozen=True)
class Policy:
    statements: tuple[Statement, ...]

    def evaluate(self, action: str, resource: str, context: Mapping[str, str]) -> Decision:
        """Deny if any applicable statement denies, else Allow if one allows, else ImplicitDeny."""
        allowed = False
        for statement in self.statements:
            if statement.applies(action, resource, context):
                if statement.effect == "Deny":
                    return "Deny"
                allowed = True
        return "Allow" if allowed else "ImplicitDeny"


def _strings(value: Any, where: str) -> list[str]:
    items = value if isinstance(value, list) else [value]
    if not items or not all(isinstance(v, str) and v for v in items):
        raise PolicyError(f"{where} must be a non-empty string or a non-empty list of non-empty strings")
    return items


def _action_pattern(action: str, where: str) -> re.Pattern[str]:
    if action != "*" and not re.fullmatch(r"[A-Za-z0-9*?-]+:[A-Za-z0-9*?]+", action):
        raise PolicyError(f"{where}: {action!r} is not an action; write service:Action, e.g. bedrock:InvokeModel")
    return wildcard(action, ignore_case=True)


def _resource_pattern(resource: str, where: str) -> re.Pattern[str]:
    if resource != "*" and not resource.startswith("arn:"):
        raise PolicyError(f"{where}: {resource!r} is not an ARN or '*'")
    return wildcard(resource)


def _condition_values(operator: str, key: str, raw: Any, where: str) -> tuple[Any, ...]:
    items = raw if isinstance(raw, list) else [raw]
    if not items:
        raise PolicyError(f"{where}: {operator} {key} has no values")
    texts = []
    for item in items:
        if isinstance(item, bool):
            texts.append("true" if item else "false")
        elif isinstance(item, (str, int, float)):
            texts.append(str(item))
        else:
            raise PolicyError(f"{where}: {operator} {key} values must be strings, numbers or booleans")
    if operator == "Null":
        if len(texts) != 1:
            raise PolicyError(f"{where}: Null {key} takes one value, true or false")
        try:
            return (_bool(texts[0]),)
        except ValueError as error:
            raise PolicyError(f"{where}: Null {key}: {error}") from None
    parse = OPERATORS[operator][0]
    try:
        return tuple(parse(t) for t in texts)
    except (ValueError, TypeError, OverflowError) as error:
        raise PolicyError(f"{where}: {operator} {key}: {error}") from None


def _conditions(raw: Any, where: str) -> tuple[Condition, ...]:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}.Condition must be an object of operator -> {{key: values}}")
    found = []
    for name, block in raw.items():
        operator = name[: -len("IfExists")] if name.endswith("IfExists") else name
        if operator not in OPERATORS and operator != "Null":
            known = ", ".join([*OPERATORS, "Null"])
            raise PolicyError(f"{where}.Condition: unsupported operator {name!r}; supported: {known} (+IfExists)")
        if not isinstance(block, dict) or not block:
            raise PolicyError(f"{where}.Condition.{name} must be a non-empty object of key -> values")
        for key, values in block.items():
            if not isinstance(key, str) or not key:
                raise PolicyError(f"{where}.Condition.{name}: condition keys are non-empty strings")
            parsed = _condition_values(operator, key, values, f"{where}.Condition")
            found.append(Condition(operator, key.lower(), parsed, name != operator))
    return tuple(found)


_STATEMENT_KEYS = {"Sid", "Effect", "Action", "NotAction", "Resource", "NotResource", "Condition"}


def _statement(raw: Any, where: str) -> Statement:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where} must be an object")
    if "Principal" in raw or "NotPrincipal" in raw:
        raise PolicyError(f"{where}: identity-based policies have no Principal; the key's principal is implied")
    unknown = sorted(set(raw) - _STATEMENT_KEYS)
    if unknown:
        raise PolicyError(f"{where}: unknown element(s) {', '.join(unknown)}")
    effect = raw.get("Effect")
    if effect not in ("Allow", "Deny"):
        raise PolicyError(f"{where}.Effect must be \"Allow\" or \"Deny\"")
    if ("Action" in raw) == ("NotAction" in raw):
        raise PolicyError(f"{where} needs exactly one of Action or NotAction")
    if ("Resource" in raw) == ("NotResource" in raw):
        raise PolicyError(f"{where} needs exactly one of Resource or NotResource")
    action_key = "Action" if "Action" in raw else "NotAction"
    resource_key = "Resource" if "Resource" in raw else "NotResource"
    actions = tuple(_action_pattern(a, f"{where}.{action_key}") for a in _strings(raw[action_key], action_key))
    resources = tuple(
        _resource_pattern(r, f"{where}.{resource_key}") for r in _strings(raw[resource_key], resource_key)
    )
    conditions = _conditions(raw["Condition"], where) if "Condition" in raw else ()
    return Statement(effect, actions, action_key == "NotAction", resources, resource_key == "NotResource", conditions)


def parse_policy(document: Any) -> Policy:
    """Validate a policy document (already JSON-decoded) and compile it; PolicyError says what is wrong."""
    if not isinstance(document, dict):
        raise PolicyError("a policy is a JSON object with Version and Statement")
    unknown = sorted(set(document) - {"Version", "Id", "Statement"})
    if unknown:
        raise PolicyError(f"unknown top-level element(s) {', '.join(unknown)}")
    version = document.get("Version", "2012-10-17")
    if version not in VERSIONS:
        raise PolicyError(f"Version must be one of {', '.join(VERSIONS)}")
    raw = document.get("Statement")
    items = raw if isinstance(raw, list) else [raw] if raw is not None else []
    if not items:
        raise PolicyError("Statement must be a statement object or a non-empty list of them")
    return Policy(tuple(_statement(item, f"Statement[{i}]") for i, item in enumerate(items)))
