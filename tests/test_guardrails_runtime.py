"""Guardrails on the runtime: ApplyGuardrail, ``guardrailConfig`` on Converse and ConverseStream (sync and async),
the guardrail headers of InvokeModel (and its stream), beyond-Bedrock tool checks, errors, metrics and log fields.

Guardrails are made with the real ``bedrock`` client (CreateGuardrail, CreateGuardrailVersion) on a fake-engine server
whose scripted replies hold what the guardrail must catch (an email address, a ticket number); one test runs the
embedded model.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from llamarock.observability.invocation_log_record import record_meta
from llamarock.observability.records import InvocationRecord
from tests.conftest import Server, start_server, stop_server

EMAIL_MODEL = "meta.llama3-1-8b-instruct-v1:0"  # answers with an email address
TICKET_MODEL = "meta.llama3-1-70b-instruct-v1:0"  # answers with a ticket number (a regex that blocks)
PLAIN_MODEL = "meta.llama3-8b-instruct-v1:0"  # answers with nothing a guardrail minds
TOOL_MODEL = "meta.llama3-3-70b-instruct-v1:0"  # the same deployment, with tool use
CALLER_MODEL = "meta.llama3-1-405b-instruct-v1:0"  # calls send_mail with an email address

EMAIL_REPLY = ("Sure. The office that handles these questions is open on weekdays, and it keeps a queue of requests "
               "that it works through in order, so an answer can take a while to come back to you. When you are "
               "ready, write to alice@example.com and she will answer you.")  # longer than one checked chunk
CONFIG = f"""
[[deployments]]
name = "fake-email"
engine = "fake"
models = ["meta.llama3-1-8b-instruct-v1:0"]
fake_reply = {json.dumps(EMAIL_REPLY)}

[[deployments]]
name = "fake-ticket"
engine = "fake"
models = ["meta.llama3-1-70b-instruct-v1:0"]
fake_reply = "Your ticket is TKT-1234, keep it."

[[deployments]]
name = "fake-caller"
engine = "fake"
models = ["meta.llama3-1-405b-instruct-v1:0"]
fake_reply = {json.dumps(json.dumps({"name": "send_mail", "parameters": {"to": "carol@example.net"}}))}

[[deployments]]
name = "fake-plain"
engine = "fake"
models = ["*"]
fake_reply = "The weather is mild today."
"""

BLOCKED_INPUT = "Sorry, your request was blocked."
BLOCKED_OUTPUT = "Sorry, the answer was blocked."


def guardrail_config(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "blockedInputMessaging": BLOCKED_INPUT,
        "blockedOutputsMessaging": BLOCKED_OUTPUT,
        "wordPolicyConfig": {"wordsConfig": [{"text": "kumquat"}]},
        "sensitiveInformationPolicyConfig": {
            "piiEntitiesConfig": [{"type": "EMAIL", "action": "ANONYMIZE"}],
            "regexesConfig": [{"name": "ticket", "pattern": "TKT-[0-9]{4}", "action": "BLOCK"}],
        },
    }


@pytest.fixture(scope="module")
def guard_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("guardrt"), config=CONFIG)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def rt(guard_server: Server) -> Any:
    return guard_server.client()


@pytest.fixture(scope="module")
def guardrail(guard_server: Server) -> tuple[str, str]:
    """A guardrail (words, PII, regex) and its version 1."""
    control = guard_server.client("bedrock")
    made = control.create_guardrail(**guardrail_config("runtime"))
    version = control.create_guardrail_version(guardrailIdentifier=made["guardrailId"])["version"]
    return made["guardrailId"], version


def user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"text": text}]}


def config(guardrail: tuple[str, str], **more: str) -> dict[str, str]:
    return {"guardrailIdentifier": guardrail[0], "guardrailVersion": guardrail[1], **more}


def stream(response: Any) -> list[dict[str, Any]]:
    return list(response["stream"])


def streamed_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["contentBlockDelta"]["delta"].get("text", "") for e in events if "contentBlockDelta" in e)


def code_of(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


# ------------------------------------------------------------------------------------------------- ApplyGuardrail


def test_apply_guardrail_input_and_output(rt: Any, guardrail: tuple[str, str]) -> None:
    gid, version = guardrail
    blocked = rt.apply_guardrail(guardrailIdentifier=gid, guardrailVersion=version, source="INPUT",
                                 content=[{"text": {"text": "Tell me about kumquat trees"}}])
    assert blocked["action"] == "GUARDRAIL_INTERVENED"
    assert blocked["outputs"] == [{"text": BLOCKED_INPUT}]
    words = blocked["assessments"][0]["wordPolicy"]["customWords"]
    assert {"match": "kumquat", "action": "BLOCKED", "detected": True} in words
    assert blocked["usage"]["wordPolicyUnits"] >= 1

    masked = rt.apply_guardrail(guardrailIdentifier=gid, guardrailVersion=version, source="OUTPUT",
                                content=[{"text": {"text": "Mail bob@example.org today."}}])
    assert masked["action"] == "GUARDRAIL_INTERVENED"
    assert masked["outputs"][0]["text"] == "Mail {EMAIL} today."
    entities = masked["assessments"][0]["sensitiveInformationPolicy"]["piiEntities"]
    assert entities[0]["type"] == "EMAIL" and entities[0]["action"] == "ANONYMIZED"

    clean = rt.apply_guardrail(guardrailIdentifier=gid, guardrailVersion="DRAFT", source="OUTPUT",
                               content=[{"text": {"text": "Nothing to see."}}], outputScope="FULL")
    assert clean["action"] == "NONE"


# ------------------------------------------------------------------------------------------------------ Converse


def test_converse_blocked_input_never_generates(rt: Any, guardrail: tuple[str, str]) -> None:
    response = rt.converse(modelId=EMAIL_MODEL, messages=[user("Do you like kumquat jam?")],
                           guardrailConfig=config(guardrail, trace="enabled"))
    assert response["stopReason"] == "guardrail_intervened"
    assert response["output"]["message"]["content"] == [{"text": BLOCKED_INPUT}]
    assert response["usage"] == {"inputTokens": 0, "outputTokens": 0, "totalTokens": 0}
    trace = response["trace"]["guardrail"]
    words = trace["inputAssessment"][guardrail[0]]["wordPolicy"]["customWords"]
    assert words[0]["match"] == "kumquat" and words[0]["action"] == "BLOCKED"
    assert "outputAssessments" not in trace
    # An input the guardrail would only mask is not sent on masked either: the answer is the blocked messaging.
    masked = rt.converse(modelId=PLAIN_MODEL, messages=[user("I am dan@example.com")],
                         guardrailConfig=config(guardrail))
    assert masked["output"]["message"]["content"] == [{"text": BLOCKED_INPUT}]
    assert masked["usage"]["totalTokens"] == 0


def test_converse_masked_and_blocked_output(rt: Any, guardrail: tuple[str, str]) -> None:
    masked = rt.converse(modelId=EMAIL_MODEL, messages=[user("Who can help?")],
                         guardrailConfig=config(guardrail, trace="enabled"))
    text = masked["output"]["message"]["content"][0]["text"]
    assert "alice@example.com" not in text and "{EMAIL}" in text
    assert masked["stopReason"] == "guardrail_intervened"
    assert masked["usage"]["outputTokens"] > 0  # the model did generate
    trace = masked["trace"]["guardrail"]
    assert "alice@example.com" in trace["modelOutput"][0]
    found = trace["outputAssessments"][guardrail[0]][0]["sensitiveInformationPolicy"]["piiEntities"]
    assert found[0]["match"] == "alice@example.com"

    blocked = rt.converse(modelId=TICKET_MODEL, messages=[user("My ticket?")], guardrailConfig=config(guardrail))
    assert blocked["output"]["message"]["content"] == [{"text": BLOCKED_OUTPUT}]
    assert blocked["stopReason"] == "guardrail_intervened"
    assert "trace" not in blocked  # trace is disabled unless asked for

    fine = rt.converse(modelId=PLAIN_MODEL, messages=[user("Weather?")], guardrailConfig=config(guardrail))
    assert fine["stopReason"] == "end_turn"
    assert fine["output"]["message"]["content"][0]["text"] == "The weather is mild today."


def test_guard_content_limits_what_is_checked(rt: Any, guardrail: tuple[str, str]) -> None:
    """With guardContent in the messages, only it is checked: the denied word outside it passes."""
    messages = [{"role": "user", "content": [
        {"text": "kumquat is my favourite fruit."},
        {"guardContent": {"text": {"text": "What is the weather?", "qualifiers": ["guard_content"]}}},
    ]}]
    answered = rt.converse(modelId=PLAIN_MODEL, messages=messages, guardrailConfig=config(guardrail))
    assert answered["stopReason"] == "end_turn"
    messages[0]["content"][1]["guardContent"]["text"]["text"] = "and kumquat?"
    refused = rt.converse(modelId=PLAIN_MODEL, messages=messages, guardrailConfig=config(guardrail))
    assert refused["stopReason"] == "guardrail_intervened"


def test_converse_stream_sync_masks_before_sending(rt: Any, guardrail: tuple[str, str]) -> None:
    events = stream(rt.converse_stream(modelId=EMAIL_MODEL, messages=[user("Who?")],
                                       guardrailConfig=config(guardrail, trace="enabled",
                                                              streamProcessingMode="sync")))
    text = streamed_text(events)
    assert "alice@example.com" not in text and "{EMAIL}" in text
    assert events[-2]["messageStop"]["stopReason"] == "guardrail_intervened"
    checks = events[-1]["metadata"]["trace"]["guardrail"]["outputAssessments"][guardrail[0]]
    assert len(checks) == 2  # the answer went out in two checked chunks, cut at a sentence end
    deltas = [e["contentBlockDelta"]["delta"]["text"] for e in events if "contentBlockDelta" in e]
    assert deltas[0].endswith("come back to you.") and "{EMAIL}" in deltas[1]

    blocked = stream(rt.converse_stream(modelId=EMAIL_MODEL, messages=[user("kumquat?")],
                                        guardrailConfig=config(guardrail)))
    assert streamed_text(blocked) == BLOCKED_INPUT
    assert blocked[-1]["metadata"]["usage"]["outputTokens"] == 0


def test_converse_stream_async_sends_then_intervenes(rt: Any, guardrail: tuple[str, str]) -> None:
    events = stream(rt.converse_stream(modelId=TICKET_MODEL, messages=[user("Ticket?")],
                                       guardrailConfig=config(guardrail, streamProcessingMode="async")))
    assert streamed_text(events).endswith(BLOCKED_OUTPUT)
    assert events[-2]["messageStop"]["stopReason"] == "guardrail_intervened"
    plain = stream(rt.converse_stream(modelId=PLAIN_MODEL, messages=[user("Weather?")],
                                      guardrailConfig=config(guardrail, streamProcessingMode="async")))
    assert streamed_text(plain) == "The weather is mild today."
    assert plain[-2]["messageStop"]["stopReason"] == "end_turn"


# --------------------------------------------------------------------------------------------------- InvokeModel


def test_invoke_model_with_guardrail_headers(rt: Any, guardrail: tuple[str, str]) -> None:
    gid, version = guardrail
    blocked = json.loads(rt.invoke_model(modelId=EMAIL_MODEL, body=json.dumps({"prompt": "kumquat?"}),
                                         guardrailIdentifier=gid, guardrailVersion=version,
                                         trace="ENABLED")["body"].read())
    assert blocked["generation"] == BLOCKED_INPUT
    assert blocked["amazon-bedrock-guardrailAction"] == "INTERVENED"
    assert blocked["generation_token_count"] == 0
    assert "wordPolicy" in blocked["amazon-bedrock-trace"]["guardrail"]["input"][gid]

    masked = json.loads(rt.invoke_model(modelId=EMAIL_MODEL, body=json.dumps({"prompt": "who?"}),
                                        guardrailIdentifier=gid, guardrailVersion=version)["body"].read())
    assert "{EMAIL}" in masked["generation"] and "alice@" not in masked["generation"]
    assert masked["amazon-bedrock-guardrailAction"] == "INTERVENED"
    assert "amazon-bedrock-trace" not in masked

    fine = json.loads(rt.invoke_model(modelId=PLAIN_MODEL, body=json.dumps({"prompt": "weather?"}),
                                      guardrailIdentifier=gid, guardrailVersion=version)["body"].read())
    assert fine["amazon-bedrock-guardrailAction"] == "NONE"

    # Input tags: only the tagged span is checked, and the tags never reach the model.
    tagged = {"prompt": "kumquat <amazon-bedrock-guardrails-guardContent_xyz>weather?"
                        "</amazon-bedrock-guardrails-guardContent_xyz>",
              "amazon-bedrock-guardrailConfig": {"tagSuffix": "xyz"}}
    passed = json.loads(rt.invoke_model(modelId=PLAIN_MODEL, body=json.dumps(tagged), guardrailIdentifier=gid,
                                        guardrailVersion=version)["body"].read())
    assert passed["amazon-bedrock-guardrailAction"] == "NONE"


def test_invoke_model_stream_with_guardrail(rt: Any, guardrail: tuple[str, str]) -> None:
    gid, version = guardrail
    response = rt.invoke_model_with_response_stream(modelId=EMAIL_MODEL, body=json.dumps({"prompt": "who?"}),
                                                    guardrailIdentifier=gid, guardrailVersion=version,
                                                    trace="ENABLED")
    chunks = [json.loads(event["chunk"]["bytes"]) for event in response["body"]]
    text = "".join(c["generation"] for c in chunks)
    assert "{EMAIL}" in text and "alice@" not in text
    assert chunks[-1]["amazon-bedrock-guardrailAction"] == "INTERVENED"
    assert chunks[-1]["stop_reason"] is not None and "amazon-bedrock-invocationMetrics" in chunks[-1]
    assert gid in chunks[-1]["amazon-bedrock-trace"]["guardrail"]["outputs"][0]


# ----------------------------------------------------------------------------------------- beyond Bedrock: tools

SEND = {"toolSpec": {"name": "send_mail", "description": "Send a mail.", "inputSchema": {"json": {
    "type": "object", "properties": {"to": {"type": "string"}}, "required": ["to"]}}}}


def test_tool_inputs_results_and_specs_are_checked(rt: Any, guardrail: tuple[str, str]) -> None:
    gid = guardrail[0]
    result = [user("Look it up"),
              {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "send_mail",
                                                             "input": {"to": "x"}}}]},
              {"role": "user", "content": [{"toolResult": {"toolUseId": "t1",
                                                           "content": [{"text": "kumquat orchard found"}]}}]}]
    answer = rt.converse(modelId=TOOL_MODEL, messages=result, toolConfig={"tools": [SEND]},
                         guardrailConfig=config(guardrail))
    assert answer["stopReason"] == "guardrail_intervened" and answer["usage"]["inputTokens"] == 0

    spec = json.loads(json.dumps(SEND))
    spec["toolSpec"]["description"] = "Order kumquat crates."
    answer = rt.converse(modelId=TOOL_MODEL, messages=[user("hi")], toolConfig={"tools": [spec]},
                         guardrailConfig=config(guardrail))
    assert answer["stopReason"] == "guardrail_intervened"

    # The model's tool call holds an email address: the call is withheld.
    unguarded = rt.converse(modelId=CALLER_MODEL, messages=[user("Mail Carol")], toolConfig={"tools": [SEND]})
    assert unguarded["stopReason"] == "tool_use"
    called = rt.converse(modelId=CALLER_MODEL, messages=[user("Mail Carol")], toolConfig={"tools": [SEND]},
                         guardrailConfig=config(guardrail, trace="enabled"))
    assert called["stopReason"] == "guardrail_intervened"
    assert called["output"]["message"]["content"] == [{"text": BLOCKED_OUTPUT}]
    streamed = stream(rt.converse_stream(modelId=CALLER_MODEL, messages=[user("Mail Carol")],
                                         toolConfig={"tools": [SEND]}, guardrailConfig=config(guardrail)))
    assert not any("contentBlockStart" in event for event in streamed)  # no toolUse block was sent
    assert streamed_text(streamed) == BLOCKED_OUTPUT
    assert "carol@example.net" in called["trace"]["guardrail"]["modelOutput"][0]
    assert gid in called["trace"]["guardrail"]["outputAssessments"]


# -------------------------------------------------------------------------------------------------------- errors


def test_unknown_guardrail_or_version_is_not_found(rt: Any, guardrail: tuple[str, str]) -> None:
    for identifier, version in (("nosuchguardrail1", "1"), (guardrail[0], "99")):
        with pytest.raises(ClientError) as error:
            rt.apply_guardrail(guardrailIdentifier=identifier, guardrailVersion=version, source="INPUT",
                               content=[{"text": {"text": "hi"}}])
        assert code_of(error) == "ResourceNotFoundException"
        for call in (rt.converse, rt.converse_stream):
            with pytest.raises(ClientError) as error:
                call(modelId=PLAIN_MODEL, messages=[user("hi")],
                     guardrailConfig={"guardrailIdentifier": identifier, "guardrailVersion": version})
            assert code_of(error) == "ResourceNotFoundException"
        for call in (rt.invoke_model, rt.invoke_model_with_response_stream):
            with pytest.raises(ClientError) as error:
                call(modelId=PLAIN_MODEL, body=json.dumps({"prompt": "hi"}), guardrailIdentifier=identifier,
                     guardrailVersion=version)
            assert code_of(error) == "ResourceNotFoundException"


def test_bad_guardrail_config_is_a_validation_error(rt: Any, guardrail: tuple[str, str]) -> None:
    with pytest.raises(ClientError) as error:
        rt.converse(modelId=PLAIN_MODEL, messages=[user("hi")], guardrailConfig={"guardrailIdentifier": guardrail[0]})
    assert code_of(error) == "ValidationException" and "guardrailVersion" in str(error.value)
    with pytest.raises(ClientError) as error:
        rt.converse_stream(modelId=PLAIN_MODEL, messages=[user("hi")],
                           guardrailConfig=config(guardrail, streamProcessingMode="eventually"))
    assert code_of(error) == "ValidationException"
    with pytest.raises(ClientError) as error:
        rt.invoke_model(modelId=PLAIN_MODEL, body=json.dumps({"prompt": "hi"}), guardrailIdentifier=guardrail[0])
    assert code_of(error) == "ValidationException" and "guardrailVersion" in str(error.value)
    with pytest.raises(ClientError) as error:
        rt.invoke_model(modelId=PLAIN_MODEL, body=json.dumps({
            "prompt": "hi", "amazon-bedrock-guardrailConfig": {"streamProcessingMode": "SOMETIMES"}}),
            guardrailIdentifier=guardrail[0], guardrailVersion=guardrail[1])
    assert code_of(error) == "ValidationException" and "streamProcessingMode" in str(error.value)


# ------------------------------------------------------------------------------------------ metrics and the log


def test_guardrail_metrics(guard_server: Server, rt: Any, guardrail: tuple[str, str]) -> None:
    rt.converse(modelId=PLAIN_MODEL, messages=[user("kumquat")], guardrailConfig=config(guardrail))
    with urllib.request.urlopen(guard_server.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    gid = guardrail[0]
    intervened = [line for line in text.splitlines()
                  if line.startswith("bedrock_guardrail_invocations_intervened_total{")
                  and f'GuardrailId="{gid}"' in line and 'GuardrailContentSource="INPUT"' in line
                  and 'Operation="Converse"' in line]
    assert intervened and float(intervened[0].rsplit(" ", 1)[1]) >= 1
    assert f'bedrock_guardrail_text_units_total{{GuardrailId="{gid}",GuardrailPolicyType="wordPolicyUnits"}}' in text


def test_invocation_log_record_has_guardrail_fields() -> None:
    record = InvocationRecord("r1", "Converse", "m", "arn:aws:iam::123456789012:root", "us-west-2",
                              guardrail_id="abc", guardrail_version="1", guardrail_action="INTERVENED",
                              guardrail_intervened=("OUTPUT",))
    assert record_meta(record, "123456789012")["guardrail"] == {
        "guardrailId": "abc", "guardrailVersion": "1", "action": "INTERVENED", "intervenedOn": ["OUTPUT"]}
    assert "guardrail" not in record_meta(InvocationRecord("r2", "Converse", "m", "p", "us-west-2"), "1")


# ------------------------------------------------------------------------------------------- the embedded model


def test_real_model_output_is_checked(server: Server) -> None:
    """On the embedded model: a regex matching any letter blocks whatever it writes (the input, only digits in a
    guardContent block, passes)."""
    control = server.client("bedrock")
    made = control.create_guardrail(name="letters", blockedInputMessaging=BLOCKED_INPUT,
                                    blockedOutputsMessaging=BLOCKED_OUTPUT,
                                    sensitiveInformationPolicyConfig={"regexesConfig": [
                                        {"name": "letters", "pattern": "[A-Za-z]", "action": "BLOCK"}]})
    answer = server.client().converse(
        modelId="meta.llama3-8b-instruct-v1:0",
        messages=[{"role": "user", "content": [{"text": "Count on from this number:"},
                                               {"guardContent": {"text": {"text": "12345"}}}]}],
        inferenceConfig={"maxTokens": 8},
        guardrailConfig={"guardrailIdentifier": made["guardrailId"], "guardrailVersion": "DRAFT",
                         "trace": "enabled"})
    assert answer["usage"]["outputTokens"] > 0
    if answer["stopReason"] == "guardrail_intervened":
        assert answer["output"]["message"]["content"] == [{"text": BLOCKED_OUTPUT}]
        assert answer["trace"]["guardrail"]["modelOutput"]
    else:  # the model wrote only digits and punctuation: nothing to block, and the check still ran
        assert made["guardrailId"] in answer["trace"]["guardrail"]["outputAssessments"]
