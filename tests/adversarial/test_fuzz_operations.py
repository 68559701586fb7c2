"""Property-based fuzzing of every implemented operation's input, generated from botocore's shapes (hypothesis).

For each row of the operation table with a handler, requests are drawn from the operation's input shape: members
bound to the URI, query string and headers go there, the rest into the JSON body, and at every level a value may
be replaced by junk (wrong types, huge or odd strings, deep nesting, unknown members). The property: the server
never answers 5xx, every error is AWS-shaped (``x-amzn-ErrorType``, a JSON ``message``, a request id), every event
stream parses with botocore's own parser, and the server is still healthy afterwards. It runs against the fake
engine and the real SmolLM2 engine; ``LLAMAROCK_FUZZ_EXAMPLES`` sets the examples per operation (default 300, so
over 5,000 requests per engine).
"""

from __future__ import annotations

import base64
import json
import os
import urllib.parse
from typing import Any

import httpx
import pytest
from botocore.eventstream import EventStreamBuffer
from botocore.model import Shape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from llamarock.bedrock import catalog
from llamarock.codec.service_model import service_model
from llamarock.context import AGENT, AGENT_RUNTIME, BEDROCK, RUNTIME, Operation
from llamarock.routes.operations import OperationTable
from tests.conftest import Server

EXAMPLES = int(os.environ.get("LLAMAROCK_FUZZ_EXAMPLES", "300"))
MAX_DEPTH = 7
# Generation is capped so that valid requests finish fast on the real engine.
MAX_TOKENS = 6

ROWS = [row for service in (RUNTIME, BEDROCK) for row in OperationTable().implemented(service).values()]
# Knowledge bases (bedrock-agent, bedrock-agent-runtime): no model generates there but RetrieveAndGenerate's, so
# the fake engine's server is enough. (S3 has its own fuzzing: tests/adversarial/test_s3_inputs.py.)
AGENT_ROWS = [row for service in (AGENT, AGENT_RUNTIME) for row in OperationTable().implemented(service).values()]
MODEL_IDS = [
    *(m.model_id for m in catalog.MODELS[:4]),
    "us.meta.llama3-1-8b-instruct-v1:0",
    "arn:aws:bedrock:us-west-2::foundation-model/meta.llama3-8b-instruct-v1:0",
    "arn:aws:bedrock:us-west-2:000000000000:inference-profile/us.meta.llama3-1-8b-instruct-v1:0",
    "arn:aws:bedrock:us-west-2:000000000000:provisioned-model/abcdefghijkl",
    "meta.nope-v1", "", "a" * 3000, "../../etc/passwd", "arn:aws:bedrock:::", "\u0000", "x/y",
]

junk_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "\ud800", "💥" * 50, "a" * 5000, "%2F..%2F", "\r\nX-Injected: 1", "null"]),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                         st.floats(allow_nan=False, allow_infinity=False), junk_text)
junk = st.one_of(
    json_scalars,
    st.recursive(json_scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                 max_leaves=6),
)


def _string(shape: Shape) -> st.SearchStrategy[Any]:
    enum = getattr(shape, "enum", None) or []
    if enum:
        return st.one_of(st.sampled_from(enum), junk_text)
    low = int(shape.metadata.get("min", 0))
    high = int(shape.metadata.get("max", 60))
    return st.text(min_size=min(low, 60), max_size=max(min(high, 60), min(low, 60)))


def values(shape: Shape, depth: int = 0) -> st.SearchStrategy[Any]:
    """Values of ``shape``, now and then replaced by junk."""
    typed = _typed(shape, depth)
    return st.one_of(typed, typed, typed, typed, typed, junk) if depth <= 3 else typed


def _typed(shape: Shape, depth: int) -> st.SearchStrategy[Any]:
    kind = shape.type_name
    if depth > MAX_DEPTH:
        return st.just({} if kind == "structure" else [] if kind == "list" else "")
    if kind == "structure" and shape.metadata.get("document"):
        # A free-form document: keys the server may look for (Converse's native sampling fields), and any others.
        names = ["temperature", "top_p", "max_gen_len", "top_k", "prompt"]
        keys = st.one_of(st.sampled_from(names), st.text(max_size=8))
        return st.dictionaries(keys, st.one_of(json_scalars, st.lists(json_scalars, max_size=2)), max_size=4)
    if kind == "structure":
        members = {name: values(member, depth + 1) for name, member in shape.members.items()
                   if member.serialization.get("location") is None}
        if shape.metadata.get("union") or getattr(shape, "is_tagged_union", False):
            if not members:
                return st.just({})
            return st.one_of(*(st.fixed_dictionaries({name: strategy}) for name, strategy in members.items()))
        required = {name: strategy for name, strategy in members.items() if name in shape.required_members}
        optional = {name: strategy for name, strategy in members.items() if name not in required}
        return st.fixed_dictionaries(required, optional=optional)
    if kind == "list":
        return st.lists(values(shape.member, depth + 1), max_size=3)
    if kind == "map":
        return st.dictionaries(st.text(max_size=10), values(shape.value, depth + 1), max_size=3)
    if kind == "string":
        return _string(shape)
    if kind in ("integer", "long"):
        low, high = int(shape.metadata.get("min", -5)), min(int(shape.metadata.get("max", 10**6)), 10**6)
        return st.integers(low - 2, high + 2)
    if kind in ("float", "double"):
        return st.floats(-3, 3, allow_nan=False)
    if kind == "boolean":
        return st.booleans()
    if kind == "blob":
        return st.binary(max_size=48).map(lambda data: base64.b64encode(data).decode())
    if kind == "timestamp":
        return st.integers(0, 2_000_000_000)
    return json_scalars  # document and anything else: any JSON


native_body = st.fixed_dictionaries(
    {"prompt": st.one_of(st.text(max_size=60), junk)},
    optional={"temperature": st.one_of(st.floats(-1, 2, allow_nan=False), junk),
              "top_p": st.one_of(st.floats(-1, 2, allow_nan=False), junk),
              "max_gen_len": st.one_of(st.integers(-2, MAX_TOKENS), junk),
              "images": st.one_of(st.lists(st.text(max_size=20), max_size=2), junk),
              "extra": junk},
)


def _cap(body: Any, top: bool = True) -> Any:
    """Keep valid generations short: maxTokens / max_gen_len at most MAX_TOKENS, and given when the body leaves them
    out (a body without them generates up to the model's default length: hundreds of tokens on the real engine, which
    made one fuzzing run take minutes or seconds depending on its random draws)."""
    if top and isinstance(body, dict):
        if "prompt" in body:
            body.setdefault("max_gen_len", MAX_TOKENS)
        if "messages" in body:
            config = body.setdefault("inferenceConfig", {})
            if isinstance(config, dict):
                config.setdefault("maxTokens", MAX_TOKENS)
    if isinstance(body, dict):
        config = body.get("inferenceConfig")
        if isinstance(config, dict) and isinstance(config.get("maxTokens"), int) and config["maxTokens"] > MAX_TOKENS:
            config["maxTokens"] = MAX_TOKENS
        if isinstance(body.get("max_gen_len"), int) and body["max_gen_len"] > MAX_TOKENS:
            body["max_gen_len"] = MAX_TOKENS
        for value in body.values():
            _cap(value, False)
    elif isinstance(body, list):
        for value in body:
            _cap(value, False)
    return body


@st.composite
def requests(draw: st.DrawFn, row: Operation) -> tuple[str, str, dict[str, str], bytes]:
    """(method, path with query, headers, body) of one fuzzed call of ``row``."""
    model = service_model(row.service)
    operation = model.operation_model(row.name)
    shape = operation.input_shape
    uri = operation.http["requestUri"]
    path, _, fixed_query = uri.partition("?")
    query: list[tuple[str, str]] = [tuple(part.split("=", 1)) for part in fixed_query.split("&") if "=" in part]  # type: ignore[misc]
    headers = {"content-type": "application/json"}
    for name, member in (shape.members.items() if shape is not None else ()):
        location, wire = member.serialization.get("location"), member.serialization.get("name", name)
        if location == "uri":
            label = draw(st.sampled_from(MODEL_IDS)) if name == "modelId" else draw(st.one_of(_string(member),
                                                                                            junk_text))
            path = path.replace("{" + wire + "}", urllib.parse.quote(str(label), safe="", errors="surrogatepass"))
            path = path.replace("{" + wire + "+}", urllib.parse.quote(str(label), safe="/", errors="surrogatepass"))
        elif location == "querystring" and draw(st.booleans()):
            query.append((wire, str(draw(st.one_of(_typed(member, 1), junk_text)))))
        elif location == "header" and draw(st.booleans()):
            value = str(draw(st.one_of(_typed(member, 1), junk_text))).strip()  # what HTTP can carry
            if value and value.isprintable() and len(value) < 2000:
                if not value.isascii():  # httpx sends header values as ASCII
                    continue
                headers[wire] = value
    if row.name == "InvokeModel" or row.name == "InvokeModelWithResponseStream":
        document: Any = draw(native_body)
    elif shape is not None:
        document = draw(values(shape))
        if isinstance(document, dict) and "messages" in shape.members and draw(st.booleans()):
            # Half the time the conversation itself is valid, so that fuzzing reaches what is checked after it.
            document["messages"] = [{"role": "user", "content": [{"text": "hi"}]}]
    else:
        document = {}
    try:
        body = json.dumps(_cap(document)).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        body = b'{"unserializable": true}'
    odd = draw(st.integers(0, 40))
    if odd == 0:
        body = draw(st.sampled_from([b"", b"{", b"not json", b"\xff\xfe", b"[]", b"null"]))
    elif odd == 1:  # nesting deeper than any parser's recursion limit
        depth = draw(st.integers(500, 20000))
        body = b'{"prompt": "x", "messages": ' + b"[" * depth + b"]" * depth + b"}"
    if query:
        path += "?" + urllib.parse.urlencode(query, errors="surrogatepass")
    return operation.http["method"], path, headers, body


def _check(response: httpx.Response, what: str) -> None:
    assert response.status_code < 500, f"{what} -> {response.status_code} {response.text[:500]}"
    if response.status_code >= 400:
        assert response.headers.get("x-amzn-errortype", "").endswith(
            ":http://internal.amazon.com/coral/com.amazon.bedrock/"), what
        body = response.json()
        assert isinstance(body.get("message"), str), what
        assert response.headers.get("x-amzn-requestid"), what
    elif response.headers.get("content-type", "").startswith("application/vnd.amazon.eventstream"):
        buffer = EventStreamBuffer()
        buffer.add_data(response.content)
        for message in buffer:
            assert message.headers[":message-type"] in ("event", "exception"), what


def _fuzz(server: Server, row: Operation) -> None:
    with httpx.Client(base_url=server.url, timeout=120) as client:

        @settings(max_examples=EXAMPLES, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much])
        @given(requests(row))
        def run(call: tuple[str, str, dict[str, str], bytes]) -> None:
            method, path, headers, body = call
            response = client.request(method, path, headers=headers, content=body)
            _check(response, f"{row.name}: {method} {path[:200]} {body[:300]!r}")

        run()
    assert server.health()[0] == 200


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_fuzzed_inputs_on_the_fake_engine(fake_server: Server, row: Operation) -> None:
    _fuzz(fake_server, row)


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_fuzzed_inputs_on_the_real_engine(server: Server, row: Operation) -> None:
    _fuzz(server, row)


@pytest.mark.parametrize("row", AGENT_ROWS, ids=[row.name for row in AGENT_ROWS])
def test_fuzzed_knowledge_base_inputs(fake_server: Server, row: Operation) -> None:
    _fuzz(fake_server, row)
