"""Inputs that used to crash or wedge the server, against the REAL model (SmolLM2 via llama.cpp) and the bounds.

Measured with llama-cpp-python 0.3.36 on the embedded model (each case in a subprocess, grammars compiled on a
thread as the decode loop does):

- A JSON schema's ``maxLength``/``maxItems`` (and a pattern's ``{0,n}``) becomes n nested grammar groups. llama.cpp
  refuses 1,001 or more (the request failed as a 424 ModelErrorException) and dies of a stack overflow (SIGSEGV, the
  whole server) from 18,827 levels (18,593 still parse). ``minLength``/``minItems`` only lengthen the grammar
  (100,000 compiles in 15 ms).
- Optional properties: the schema converter takes 1 s for one object of ~870 (30 s was not enough for 3,000).
- Enum values: each is a live alternative on a sampling step, 0.14 s for 1,000 values, 1 s from ~8,500.
- Ambiguous patterns: one sampling step of ``(a?){200}`` took 33 s, ``(a{0,40}){0,40}`` 4.7 s, ``(.?){16}`` 1.1 s,
  ``(.?){8}`` 0.25 s, for every running sequence at once.
- ``{"prompt": ""}`` tokenizes to no tokens on SmolLM2 (no BOS): the decode loop spun on an empty batch forever.
- 10,000 nested JSON arrays: RecursionError (500); a lone ``\\ud800``: UnicodeEncodeError in the tokenizer (500).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.exceptions import ClientError

from llamarock.bedrock import schema_limits
from llamarock.bedrock.native import parse_native_request
from llamarock.bedrock.schema_limits import check_enforced_schema, pattern_optionals
from llamarock.codec.shapes import MAX_JSON_DEPTH, parse_json_body
from llamarock.engines import decode_loop
from llamarock.engines.decode_loop import Job, LlamaCppConfig, check_grammar
from llamarock.engines.llamacpp import LlamaCppEngine
from llamarock.errors import EmptyPromptError, SerializationException, UnsupportedSchemaError, ValidationException
from llamarock.services.deployments import embedded_model_path
from llamarock.types import GenerationChunk, GenerationRequest, SamplingParams

MODEL = "meta.llama3-1-8b-instruct-v1:0"
ERROR_TYPE_SUFFIX = ":http://internal.amazon.com/coral/com.amazon.bedrock/"


# ----------------------------------------------------------------------------------------------------------- helpers

def nested_objects(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": 8}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"inner": schema}, "required": ["inner"]}
    return schema


def string_schema(**bounds: Any) -> dict[str, Any]:
    return {"type": "object", "properties": {"text": {"type": "string", **bounds}}, "required": ["text"]}


def tool(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"toolSpec": {"name": name, "description": f"The {name} tool.", "inputSchema": {"json": schema}}}


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def converse_error(runtime: Any, **kwargs: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        runtime.converse(modelId=MODEL, messages=[user("Call the tool.")], inferenceConfig={"maxTokens": 16},
                         **kwargs)
    return caught.value


def check_client_error(error: ClientError, code: str, status: int, *fragments: str) -> str:
    """An AWS-shaped error: the code in x-amzn-ErrorType, the status, and a JSON message naming ``fragments``."""
    response = error.response
    assert response["Error"]["Code"] == code, response
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == code + ERROR_TYPE_SUFFIX
    message = response["Error"]["Message"]
    for fragment in fragments:
        assert fragment in message, message
    return str(message)


def raw(server: Any, path: str, body: bytes) -> tuple[int, Any, Any]:
    """POST a body boto3 would not send as is (deep nesting, lone surrogates); unsigned, auth is off."""
    url = urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        conn.close()


def check_raw(status: int, headers: Any, body: Any, code: str, *fragments: str) -> None:
    assert status == 400, body
    assert headers["Content-Type"] == "application/json"
    assert headers["x-amzn-ErrorType"] == code + ERROR_TYPE_SUFFIX
    assert isinstance(body, dict) and isinstance(body["message"], str)
    for fragment in fragments:
        assert fragment in body["message"], body


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def assert_alive(server: Any) -> None:
    """The server still answers health checks and completes a normal generation within a few seconds."""
    assert server.process.poll() is None, server.log_path.read_text()[-2000:]
    status, _ = server.health()
    assert status == 200
    started = time.monotonic()
    response = server.client().invoke_model(modelId=MODEL, body=json.dumps({"prompt": "Hello", "max_gen_len": 4}))
    payload = json.loads(response["body"].read())
    assert payload["stop_reason"] in ("stop", "length")
    assert time.monotonic() - started < 15


def path_of(action: str) -> str:
    return f"/model/{MODEL.replace(':', '%3A')}/{action}"


# ------------------------------------------------------------------------------------------ bounds, unit by unit

ACCEPTED = {
    "weather": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                 "unit": {"enum": ["celsius", "fahrenheit"]}}},
    "largest-bounds": string_schema(minLength=1000, maxLength=1000),
    "items-1000": {"type": "array", "items": {"type": "string", "maxLength": 1000}, "maxItems": 1000},
    "enum-1000": {"enum": [f"value{i}" for i in range(1000)]},
    "nested-31": nested_objects(31),
    "properties-256": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(256)}},
    "phone": string_schema(pattern=r"^(\+\d{1,2}\s?)?\(?\d{3}\)?[\s.-]?\d{3}[\s.-]?\d{4}$"),
    "ipv4": string_schema(pattern=r"^(\d{1,3}\.){3}\d{1,3}$"),
    "email": string_schema(pattern=r"^[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}$"),
    "date-time": string_schema(pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?(Z|[+-]\d{2}:\d{2})?$"),
    "optional-groups-8": string_schema(pattern="^(.?){8}$"),
    "astral-character": {"type": "string", "description": "\U0001f600"},
}


@pytest.mark.parametrize("schema", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_realistic_schemas_pass_the_bounds(schema: dict[str, Any]) -> None:
    check_enforced_schema(schema, "The schema")


REFUSED = {
    "maxLength-30000": (string_schema(maxLength=30_000), "maxLength 30000 at #/properties/text is above 1000"),
    "maxLength-1001": (string_schema(maxLength=1001), "maxLength 1001"),
    "minLength-huge": (string_schema(minLength=10**12), "minLength 1000000000000"),
    "minItems-30000": ({"type": "array", "items": {"type": "integer"}, "minItems": 30_000}, "minItems 30000"),
    "maxItems-20000": ({"type": "array", "items": {"type": "integer"}, "maxItems": 20_000}, "maxItems 20000"),
    "depth-100": (nested_objects(100), "more than 64 levels deep"),
    "properties-257": ({"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(257)}},
                       "257 properties, more than the 256"),
    "properties-total": ({"type": "object", "properties": {
        f"o{j}": {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(200)}}
        for j in range(6)}}, "1206 properties in all, more than 1024"),
    "enum-1001": ({"enum": list(range(1001))}, "1001 enum and const values"),
    "anyOf-1001": ({"anyOf": [{"type": "string", "maxLength": i} for i in range(1001)]},
                   "1001 anyOf and oneOf alternatives"),
    "pattern-long": (string_schema(pattern="^" + "ab" * 600 + "$"), "is 1202 characters long, more than 1000"),
    "pattern-repeat": (string_schema(pattern="^a{0,30000}$"), "repeats a part 30000 times"),
    "pattern-ambiguous": (string_schema(pattern="^(a?){200}$"), "200 optional or variable-length parts"),
    "pattern-nested": (string_schema(pattern="^(a{0,40}){0,40}$"), "40 optional"),
    "size": ({"type": "object", "properties": {f"p{i}": {"type": "string", "description": "d" * 1000}
                                               for i in range(101)}}, "characters of JSON, more than 100000"),
    "lone-surrogate": ({"type": "string", "description": "bad \ud800"}, "unpaired surrogate \\ud800"),
}


@pytest.mark.parametrize(("schema", "fragment"), REFUSED.values(), ids=REFUSED.keys())
def test_schemas_beyond_the_bounds_are_refused(schema: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ValidationException) as caught:
        check_enforced_schema(schema, "The outputConfig schema")
    message = caught.value.message
    assert message.startswith("The outputConfig schema can't be enforced: "), message
    assert fragment in message, message
    assert message.endswith(", and try again.")


@pytest.mark.parametrize(("pattern", "cost", "repeat"), [
    ("^abc$", 0, 0), (r"^\d{3}-\d{4}$", 0, 4), ("^a?b?$", 2, 0), ("^a{0,40}a{0,40}$", 2, 40),
    ("^([a-z]?[a-z]){50}$", 1, 50), ("^(a?){200}$", 200, 200), ("^(a|b|){10}$", 10, 10), ("^(a*)+$", 2, 0),
    (r"^[(?{]\(\)$", 0, 0), ("^((a?){5}){0,5}$", 25, 5), ("^(unbalanced$", 0, 0),
])
def test_pattern_optionals(pattern: str, cost: int, repeat: int) -> None:
    assert pattern_optionals(pattern) == (cost, repeat)


def test_grammar_bounds() -> None:
    check_grammar('root ::= "(((((" [(] "\\"(" ( "a" ( "b" )? )? # ((((\n')
    check_grammar("root ::= " + "(" * decode_loop.MAX_GRAMMAR_DEPTH + '"a"' + ")" * decode_loop.MAX_GRAMMAR_DEPTH)
    for grammar, fragment in [
        ("root ::= " + "(" * 1001 + '"a"' + ")" * 1001, "nests 1001 levels deep, more than the 1000"),
        ('root ::= "a"{0,20000}', "repeats a part 20000 times"),
        ('root ::= "' + "a" * (decode_loop.MAX_GRAMMAR_BYTES) + '"', "bytes, more than the 1048576"),
    ]:
        with pytest.raises(UnsupportedSchemaError, match=fragment):
            check_grammar(grammar)


@pytest.mark.parametrize(("schema", "fragment"), [
    ({"type": "string", "maxLength": 30_000}, "maxLength 30000 is above 1000"),
    ({"type": "string", "maxLength": 10**12}, "maxLength 1000000000000"),
    ({"type": "string", "pattern": "^a{0,5000}$"}, "nests 5000 levels deep"),
    (nested_objects(2000), "nests too deeply"),
])
def test_engine_refuses_grammars_it_cannot_compile(schema: dict[str, Any], fragment: str) -> None:
    """The engine's own guard, for schemas that reach it unchecked: quick, no crash, no gigabyte of grammar."""
    started = time.monotonic()
    with pytest.raises(UnsupportedSchemaError, match=fragment):
        LlamaCppEngine._grammar(schema)
    assert time.monotonic() - started < 2


PROBE = textwrap.dedent("""
    import sys, threading
    import llama_cpp
    from llama_cpp.llama_grammar import json_schema_to_gbnf
    from llamarock.services.deployments import embedded_model_path
    llama_cpp.llama_backend_init()
    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(embedded_model_path()).encode(), params)
    vocab = llama_cpp.llama_model_get_vocab(model)
    result = []
    def compile(n):
        grammar = json_schema_to_gbnf('{"type": "string", "maxLength": %d}' % n)
        sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
        result.append(bool(sampler))
    for n in (1000, 1001):
        thread = threading.Thread(target=compile, args=(n,))
        thread.start()
        thread.join()
    print(result)
""")


def test_largest_allowed_grammar_compiles_on_a_thread() -> None:
    """llama.cpp (on a thread, as in the decode loop) takes the deepest grammar the bounds allow and refuses one level
    more: the bounds match the llama.cpp in use. In a subprocess, in case it crashes."""
    assert schema_limits.MAX_LENGTH_BOUND == decode_loop.MAX_GRAMMAR_DEPTH == 1000
    done = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[True, False]"


def test_deep_json_is_unparseable() -> None:
    for depth in (10_000, MAX_JSON_DEPTH + 1):
        body = b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
        with pytest.raises(SerializationException, match=f"more than {MAX_JSON_DEPTH} levels deep"):
            parse_json_body("Converse", body, location_values={"modelId": MODEL})
    deep_input = {"a": 0}
    for _ in range(MAX_JSON_DEPTH - 8):
        deep_input = {"a": deep_input}
    body = json.dumps({"messages": [{"role": "assistant", "content": [
        {"toolUse": {"toolUseId": "t", "name": "f", "input": deep_input}}]}]}).encode()
    parse_json_body("Converse", body, location_values={"modelId": MODEL})


def test_lone_surrogates_are_refused_where_they_are_decoded() -> None:
    body = json.dumps({"messages": [user("hi \ud800 there")]}).encode()  # json.dumps escapes it: "\ud800"
    with pytest.raises(ValidationException) as caught:
        parse_json_body("Converse", body, location_values={"modelId": MODEL})
    assert caught.value.message.startswith(
        "1 validation error detected: Value at 'messages.1.member.content.1.member.text' failed to satisfy "
        "constraint: Member must be valid Unicode text, but it contains the unpaired surrogate \\ud800."
    )
    paired = json.dumps({"messages": [user("hi \U0001f600")]}).encode()  # a valid pair: one character
    assert parse_json_body("Converse", paired, location_values={"modelId": MODEL})["messages"][0]["content"][0] == {
        "text": "hi \U0001f600"}
    with pytest.raises(ValidationException) as native:
        parse_native_request(b'{"prompt": "hi \\udfff"}')
    assert native.value.message == (
        "Malformed input request: #/prompt: string contains the unpaired surrogate \\udfff and is not valid UTF-8, "
        "please reformat your input and try again."
    )


# ------------------------------------------------------------------------------------ the engine itself, in-process

@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    eng = LlamaCppEngine("llamacpp", LlamaCppConfig(model_path=embedded_model_path(), threads=2, slots=2))
    asyncio.run(eng.load())
    yield eng
    asyncio.run(eng.close())


def generate(engine: LlamaCppEngine, prompt: str, schema: dict[str, Any] | None = None) -> list[GenerationChunk]:
    request = GenerationRequest(sampling=SamplingParams(temperature=0.0, max_tokens=6), prompt=prompt,
                                json_schema=schema)

    async def run() -> list[GenerationChunk]:
        return [chunk async for chunk in engine.generate(request)]

    return asyncio.run(asyncio.wait_for(run(), 30))


def test_engine_refuses_a_prompt_without_tokens(engine: LlamaCppEngine) -> None:
    with pytest.raises(EmptyPromptError):
        generate(engine, "")
    assert generate(engine, "Hello")[-1].stop_reason is not None


def test_decode_loop_fails_a_job_without_tokens_instead_of_spinning(engine: LlamaCppEngine) -> None:
    """A zero-token Job handed straight to the loop (not through generate) fails at once and frees nothing held."""
    loop = engine._loop
    assert loop is not None
    emitted: list[GenerationChunk | BaseException] = []
    for _ in range(3):  # more than the loop's slots
        loop.submit(Job([], SamplingParams(max_tokens=4), emitted.append))
    deadline = time.monotonic() + 5
    while len(emitted) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(emitted) == 3 and all(isinstance(item, EmptyPromptError) for item in emitted)
    assert loop.stats()["running"] == 0 and loop.stats()["queued"] == 0
    assert generate(engine, "Hello")[-1].stop_reason is not None


def test_a_grammar_too_slow_to_sample_stops_its_request(engine: LlamaCppEngine, monkeypatch: Any) -> None:
    """The last line against an ambiguous grammar the bounds missed: a step over GRAMMAR_STEP_LIMIT_S fails the
    request (UnsupportedSchemaError, a 400), frees its slot, and the loop goes on. Forced here with a zero limit."""
    monkeypatch.setattr(decode_loop, "GRAMMAR_STEP_LIMIT_S", -1.0)
    with pytest.raises(UnsupportedSchemaError, match="its grammar is too ambiguous"):
        generate(engine, "Name a city:", {"type": "string", "maxLength": 8})
    assert generate(engine, "Hello")[-1].stop_reason is not None  # no grammar: not timed
    monkeypatch.undo()
    chunks = generate(engine, "Name a city:", {"type": "string", "maxLength": 8})
    assert chunks[-1].stop_reason is not None
    loop = engine._loop
    assert loop is not None
    deadline = time.monotonic() + 5  # the last chunk reaches the caller just before the loop retires the sequence
    while loop.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.stats()["running"] == 0


# --------------------------------------------------------------------------------------- the live server, real model

def test_huge_max_length_in_forced_tool_is_a_validation_error(server: Any, runtime: Any) -> None:
    """maxLength 30,000 under toolChoice tool used to SIGSEGV the whole server."""
    error = converse_error(runtime, toolConfig={"tools": [tool("echo", string_schema(maxLength=30_000))],
                                                "toolChoice": {"tool": {"name": "echo"}}})
    check_client_error(error, "ValidationException", 400, "The inputSchema of tool echo (toolChoice tool) can't be "
                       "enforced: maxLength 30000", "is above 1000", "Lower maxLength to 1000 or less")
    assert_alive(server)


def test_huge_min_items_under_tool_choice_any(server: Any, runtime: Any) -> None:
    items = {"type": "object", "properties": {"ids": {"type": "array", "items": {"type": "integer"},
                                                      "minItems": 30_000}}}
    error = converse_error(runtime, toolConfig={"tools": [tool("first", items), tool("second", {"type": "object"})],
                                                "toolChoice": {"any": {}}})
    check_client_error(error, "ValidationException", 400, "tool first (toolChoice any)", "minItems 30000",
                       "above 1000")
    assert_alive(server)


def test_deep_schema_in_forced_tool(runtime: Any) -> None:
    error = converse_error(runtime, toolConfig={"tools": [tool("deep", nested_objects(100))],
                                                "toolChoice": {"any": {}}})
    check_client_error(error, "ValidationException", 400, "more than 64 levels deep")


def test_huge_bounds_in_output_config(server: Any, runtime: Any) -> None:
    for schema, fragment in [(string_schema(maxLength=30_000), "maxLength 30000"),
                             (nested_objects(100), "more than 64 levels deep"),
                             (string_schema(pattern="^(a?){200}$"), "optional or variable-length parts")]:
        text_format = {"type": "json_schema", "structure": {"jsonSchema": {"schema": json.dumps(schema)}}}
        error = converse_error(runtime, outputConfig={"textFormat": text_format})
        check_client_error(error, "ValidationException", 400,
                           "The outputConfig.textFormat.structure.jsonSchema.schema can't be enforced", fragment)
    assert_alive(server)


def test_grammar_llama_cpp_refuses_is_400_not_424(server: Any, runtime: Any) -> None:
    """llama_sampler_init_grammar returning NULL was EngineError, a 424 ModelErrorException."""
    schema = {"type": "string", "pattern": "^\\q$"}  # the converter passes \q through; llama.cpp cannot parse it
    text_format = {"type": "json_schema", "structure": {"jsonSchema": {"schema": json.dumps(schema)}}}
    error = converse_error(runtime, outputConfig={"textFormat": text_format})
    check_client_error(error, "ValidationException", 400, "cannot be enforced by deployment",
                       "llama.cpp could not parse the grammar")
    assert_alive(server)


def test_unenforced_tool_schemas_are_not_bounded(runtime: Any) -> None:
    """With toolChoice auto a schema is only shown to the model: a large maxLength is fine there."""
    response = runtime.converse(modelId=MODEL, messages=[user("Say hi.")], inferenceConfig={"maxTokens": 4},
                                toolConfig={"tools": [tool("echo", string_schema(maxLength=30_000))]})
    assert response["stopReason"] in ("end_turn", "max_tokens", "tool_use")


@pytest.mark.parametrize("operation", ["invoke_model", "invoke_model_with_response_stream"])
def test_empty_prompt_is_refused_and_nothing_spins(server: Any, runtime: Any, operation: str) -> None:
    """``{"prompt": ""}`` gives SmolLM2 no tokens: it used to hold a slot forever while the decode loop spun."""
    for _ in range(12):  # more than the engine's slots: each used to keep one
        with pytest.raises(ClientError) as caught:
            response = getattr(runtime, operation)(modelId=MODEL, body=json.dumps({"prompt": ""}))
            if operation == "invoke_model_with_response_stream":
                list(response["body"])
        check_client_error(caught.value, "ValidationException", 400,
                           "Malformed input request: #/prompt: expected minLength: 1, actual: 0, please reformat "
                           "your input and try again.", "give an empty prompt no tokens")
    assert_alive(server)
    before = cpu_seconds(server.process.pid)
    time.sleep(2)
    assert cpu_seconds(server.process.pid) - before < 1.0  # idle: no thread busy-looping


def test_whitespace_prompt_generates(runtime: Any) -> None:
    """A prompt of spaces is text (one token or more): it runs like any other."""
    response = runtime.invoke_model(modelId=MODEL, body=json.dumps({"prompt": "   ", "max_gen_len": 4}))
    payload = json.loads(response["body"].read())
    assert payload["prompt_token_count"] >= 1
    assert payload["stop_reason"] in ("stop", "length")


@pytest.mark.parametrize("action", ["converse", "converse-stream", "count-tokens"])
def test_deeply_nested_body_is_400_not_500(server: Any, action: str) -> None:
    body = b'{"messages": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    check_raw(*raw(server, path_of(action), body), "SerializationException", "more than 256 levels deep")
    assert_alive(server)


@pytest.mark.parametrize("action", ["invoke", "invoke-with-response-stream"])
def test_deeply_nested_native_body_is_malformed(server: Any, action: str) -> None:
    body = b'{"prompt": "hi", "images": ' + b"[" * 10_000 + b"]" * 10_000 + b"}"
    check_raw(*raw(server, path_of(action), body), "ValidationException", "Malformed input request")


@pytest.mark.parametrize("action", ["invoke", "invoke-with-response-stream"])
def test_lone_surrogate_in_prompt_is_400(server: Any, action: str) -> None:
    check_raw(*raw(server, path_of(action), b'{"prompt": "Hello \\ud800"}'), "ValidationException",
              "#/prompt: string contains the unpaired surrogate \\ud800 and is not valid UTF-8")
    assert_alive(server)


@pytest.mark.parametrize("action", ["converse", "converse-stream"])
def test_lone_surrogate_in_converse_text_is_400(server: Any, action: str) -> None:
    body = b'{"messages": [{"role": "user", "content": [{"text": "Hello \\ud800"}]}]}'
    check_raw(*raw(server, path_of(action), body), "ValidationException",
              "'messages.1.member.content.1.member.text'", "unpaired surrogate \\ud800")
    system = b'{"system": [{"text": "\\udc01"}], "messages": [{"role": "user", "content": [{"text": "Hi"}]}]}'
    check_raw(*raw(server, path_of(action), system), "ValidationException", "'system.1.member.text'")


def test_lone_surrogate_in_count_tokens_is_400(server: Any, runtime: Any) -> None:
    converse = b'{"input": {"converse": {"messages": [{"role": "user", "content": [{"text": "a\\ud800"}]}]}}}'
    check_raw(*raw(server, path_of("count-tokens"), converse), "ValidationException", "unpaired surrogate \\ud800")
    with pytest.raises(ClientError) as caught:
        runtime.count_tokens(modelId=MODEL, input={"invokeModel": {"body": b'{"prompt": "a\\ud800"}'}})
    check_client_error(caught.value, "ValidationException", 400, "unpaired surrogate \\ud800")
    schema = json.dumps({"type": "string", "description": "\ud800"})  # the escape survives in the schema string
    text_format = {"type": "json_schema", "structure": {"jsonSchema": {"schema": schema}}}
    with pytest.raises(ClientError) as output:
        runtime.converse(modelId=MODEL, messages=[user("Hi")], outputConfig={"textFormat": text_format})
    check_client_error(output.value, "ValidationException", 400, "unpaired surrogate \\ud800")
