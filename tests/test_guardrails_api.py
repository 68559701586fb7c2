"""Guardrails on the ``bedrock`` control plane, driven by boto3's ``bedrock`` client against `llamarock serve`:
CreateGuardrail / GetGuardrail / ListGuardrails / UpdateGuardrail / DeleteGuardrail, CreateGuardrailVersion (DRAFT
and immutable numbered versions), tags on a guardrail's ARN, and the validation errors Bedrock gives."""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import Server

ACCOUNT = "000000000000"
GUARDRAIL_ARN = re.compile(rf"^arn:aws:bedrock:us-west-2:{ACCOUNT}:guardrail/[a-z0-9]{{12}}$")
MESSAGES = {"blockedInputMessaging": "Sorry, I can't take that.", "blockedOutputsMessaging": "Sorry, I can't say that."}


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def control(fake_server: Server) -> Any:
    return fake_server.client("bedrock")


@pytest.fixture(scope="module")
def unchecked(fake_server: Server) -> Any:
    """A client that sends what it is given (botocore checks lengths itself): the server must refuse it."""
    return fake_server.client("bedrock", parameter_validation=False)


def words(*texts: str) -> dict[str, Any]:
    return {"wordsConfig": [{"text": t} for t in texts]}


def create(control: Any, **extra: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"name": unique("guard"), **MESSAGES, "wordPolicyConfig": words("badword")}
    params.update(extra)
    created: dict[str, Any] = control.create_guardrail(**params)
    return created


def test_create_get_update_version_list_delete(control: Any) -> None:
    name = unique("support")
    created = control.create_guardrail(
        name=name, description="support bot", **MESSAGES,
        wordPolicyConfig={**words("competitor"), "managedWordListsConfig": [{"type": "PROFANITY"}]},
        sensitiveInformationPolicyConfig={
            "piiEntitiesConfig": [{"type": "EMAIL", "action": "ANONYMIZE"}],
            "regexesConfig": [{"name": "order", "pattern": r"ORD-\d{6}", "action": "BLOCK"}],
        },
        topicPolicyConfig={"topicsConfig": [{"name": "Investing", "definition": "Advice on stocks and bonds.",
                                             "examples": ["Which stock should I buy?"], "type": "DENY"}]},
        contentPolicyConfig={"filtersConfig": [
            {"type": "HATE", "inputStrength": "HIGH", "outputStrength": "MEDIUM"},
            {"type": "PROMPT_ATTACK", "inputStrength": "HIGH", "outputStrength": "NONE"},
        ]},
        contextualGroundingPolicyConfig={"filtersConfig": [{"type": "GROUNDING", "threshold": 0.7}]},
        tags=[{"key": "team", "value": "support"}],
    )
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert GUARDRAIL_ARN.match(created["guardrailArn"]) and created["version"] == "DRAFT"
    gid = created["guardrailId"]
    assert created["guardrailArn"].endswith("/" + gid)

    got = control.get_guardrail(guardrailIdentifier=gid)
    assert (got["name"], got["version"], got["status"], got["description"]) == (name, "DRAFT", "READY", "support bot")
    assert got["blockedInputMessaging"] == MESSAGES["blockedInputMessaging"]
    assert got["wordPolicy"]["words"] == [{"text": "competitor", "inputAction": "BLOCK", "outputAction": "BLOCK",
                                           "inputEnabled": True, "outputEnabled": True}]
    assert got["wordPolicy"]["managedWordLists"][0]["type"] == "PROFANITY"
    pii = got["sensitiveInformationPolicy"]
    assert pii["piiEntities"][0] == {"type": "EMAIL", "action": "ANONYMIZE", "inputAction": "ANONYMIZE",
                                     "outputAction": "ANONYMIZE", "inputEnabled": True, "outputEnabled": True}
    assert pii["regexes"][0]["pattern"] == r"ORD-\d{6}"
    assert got["topicPolicy"]["topics"][0]["examples"] == ["Which stock should I buy?"]
    assert {f["type"] for f in got["contentPolicy"]["filters"]} == {"HATE", "PROMPT_ATTACK"}
    assert got["contextualGroundingPolicy"]["filters"][0]["threshold"] == 0.7
    assert control.get_guardrail(guardrailIdentifier=created["guardrailArn"])["guardrailId"] == gid  # by ARN too

    # Version 1 snapshots the DRAFT; the DRAFT changes afterwards, version 1 does not.
    first = control.create_guardrail_version(guardrailIdentifier=gid, description="first")
    assert first["version"] == "1" and first["guardrailId"] == gid
    updated = control.update_guardrail(guardrailIdentifier=gid, name=name, **MESSAGES,
                                       wordPolicyConfig=words("rival"))
    assert updated["version"] == "DRAFT"
    draft = control.get_guardrail(guardrailIdentifier=gid, guardrailVersion="DRAFT")
    assert [w["text"] for w in draft["wordPolicy"]["words"]] == ["rival"]
    assert "sensitiveInformationPolicy" not in draft and "topicPolicy" not in draft  # replaced whole
    v1 = control.get_guardrail(guardrailIdentifier=gid, guardrailVersion="1")
    assert v1["version"] == "1" and v1["description"] == "first"
    assert [w["text"] for w in v1["wordPolicy"]["words"]] == ["competitor"]
    assert "sensitiveInformationPolicy" in v1
    assert control.create_guardrail_version(guardrailIdentifier=gid)["version"] == "2"

    listed = control.list_guardrails()["guardrails"]
    mine = [g for g in listed if g["id"] == gid]
    assert [g["version"] for g in mine] == ["DRAFT"]  # without an identifier: one DRAFT per guardrail
    versions = control.list_guardrails(guardrailIdentifier=gid)["guardrails"]
    assert [g["version"] for g in versions] == ["DRAFT", "1", "2"]
    paged = control.list_guardrails(guardrailIdentifier=gid, maxResults=2)
    assert len(paged["guardrails"]) == 2 and paged["nextToken"]

    assert control.list_tags_for_resource(resourceARN=created["guardrailArn"])["tags"] == [
        {"key": "team", "value": "support"}]
    control.tag_resource(resourceARN=created["guardrailArn"], tags=[{"key": "env", "value": "prod"}])
    control.untag_resource(resourceARN=created["guardrailArn"], tagKeys=["team"])
    assert control.list_tags_for_resource(resourceARN=created["guardrailArn"])["tags"] == [
        {"key": "env", "value": "prod"}]

    control.delete_guardrail(guardrailIdentifier=gid, guardrailVersion="1")
    code, status, _ = error_of(control.get_guardrail, guardrailIdentifier=gid, guardrailVersion="1")
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert [g["version"] for g in control.list_guardrails(guardrailIdentifier=gid)["guardrails"]] == ["DRAFT", "2"]
    assert control.create_guardrail_version(guardrailIdentifier=gid)["version"] == "3"  # numbers are not reused

    control.delete_guardrail(guardrailIdentifier=gid)
    code, status, message = error_of(control.get_guardrail, guardrailIdentifier=gid)
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert "does not exist" in message
    assert gid not in {g["id"] for g in control.list_guardrails()["guardrails"]}
    code, _, _ = error_of(control.list_tags_for_resource, resourceARN=created["guardrailArn"])
    assert code == "ResourceNotFoundException"


def test_unknown_guardrails_and_versions(control: Any) -> None:
    for call, kwargs in (
        (control.get_guardrail, {"guardrailIdentifier": "nosuchguardrail"}),
        (control.update_guardrail, {"guardrailIdentifier": "nosuchguardrail", "name": "x", **MESSAGES,
                                    "wordPolicyConfig": words("a")}),
        (control.delete_guardrail, {"guardrailIdentifier": "nosuchguardrail"}),
        (control.create_guardrail_version, {"guardrailIdentifier": "nosuchguardrail"}),
        (control.get_guardrail, {"guardrailIdentifier": f"arn:aws:bedrock:us-east-1:{ACCOUNT}:guardrail/abc"}),
    ):
        code, status, _ = error_of(call, **kwargs)
        assert (code, status) == ("ResourceNotFoundException", 404), kwargs
    gid = create(control)["guardrailId"]
    code, _, _ = error_of(control.get_guardrail, guardrailIdentifier=gid, guardrailVersion="7")
    assert code == "ResourceNotFoundException"
    code, _, message = error_of(control.get_guardrail, guardrailIdentifier=gid, guardrailVersion="latest")
    assert code == "ValidationException" and "guardrailVersion" in message
    control.delete_guardrail(guardrailIdentifier=gid)


def test_names_tokens_and_idempotency(control: Any) -> None:
    name = unique("named")
    token = uuid.uuid4().hex
    first = create(control, name=name, clientRequestToken=token)
    again = create(control, name=name, clientRequestToken=token)
    assert again["guardrailId"] == first["guardrailId"]  # same token, same request: the same guardrail
    code, status, _ = error_of(control.create_guardrail, name=name, clientRequestToken=token, **MESSAGES,
                               wordPolicyConfig=words("different"))
    assert (code, status) == ("ConflictException", 400)
    code, status, message = error_of(control.create_guardrail, name=name, **MESSAGES, wordPolicyConfig=words("x"))
    assert (code, status) == ("ConflictException", 400) and name in message
    version_token = uuid.uuid4().hex
    v = control.create_guardrail_version(guardrailIdentifier=first["guardrailId"], clientRequestToken=version_token)
    v_again = control.create_guardrail_version(guardrailIdentifier=first["guardrailId"],
                                               clientRequestToken=version_token)
    assert v["version"] == v_again["version"] == "1"
    other = create(control)
    code, _, _ = error_of(control.update_guardrail, guardrailIdentifier=other["guardrailId"], name=name, **MESSAGES,
                          wordPolicyConfig=words("x"))
    assert code == "ConflictException"
    for gid in (first["guardrailId"], other["guardrailId"]):
        control.delete_guardrail(guardrailIdentifier=gid)


@pytest.mark.parametrize(("extra", "needle"), [
    ({"wordPolicyConfig": None}, "at least one policy"),
    ({"contentPolicyConfig": {"filtersConfig": [
        {"type": "PROMPT_ATTACK", "inputStrength": "HIGH", "outputStrength": "HIGH"}]}}, "outputStrength to NONE"),
    ({"contentPolicyConfig": {"filtersConfig": [
        {"type": "HATE", "inputStrength": "HIGH", "outputStrength": "HIGH"},
        {"type": "HATE", "inputStrength": "LOW", "outputStrength": "LOW"}]}}, "more than once"),
    ({"contentPolicyConfig": {"filtersConfig": [
        {"type": "HATE", "inputStrength": "EXTREME", "outputStrength": "HIGH"}]}}, "inputStrength"),
    ({"sensitiveInformationPolicyConfig": {"piiEntitiesConfig": [{"type": "SHOE_SIZE", "action": "BLOCK"}]}},
     "piiEntitiesConfig"),
    ({"sensitiveInformationPolicyConfig": {"regexesConfig": [{"name": "r", "pattern": "(unclosed",
                                                             "action": "BLOCK"}]}}, "not a valid regular expression"),
    ({"sensitiveInformationPolicyConfig": {}}, "piiEntitiesConfig"),
    ({"topicPolicyConfig": {"topicsConfig": [
        {"name": "Same", "definition": "a", "type": "DENY"}, {"name": "same", "definition": "b", "type": "DENY"}]}},
     "more than once"),
    ({"topicPolicyConfig": {"topicsConfig": [{"name": "Bad/Name", "definition": "a", "type": "DENY"}]}},
     "regular expression pattern"),
    ({"topicPolicyConfig": {"topicsConfig": [{"name": "T", "definition": "a", "type": "DENY",
                                              "examples": ["e"] * 6}]}}, "examples"),
    ({"contextualGroundingPolicyConfig": {"filtersConfig": [{"type": "GROUNDING", "threshold": 1.0}]}},
     "0 to 0.99"),
    ({"wordPolicyConfig": {}}, "wordsConfig"),
    ({"topicPolicyConfig": {"topicsConfig": [{"name": "T", "definition": "a", "type": "DENY"}],
                            "tierConfig": {"tierName": "STANDARD"}}}, "crossRegionConfig"),
    ({"name": "has space"}, "name"),
    ({"blockedInputMessaging": ""}, "blockedInputMessaging"),
    ({"automatedReasoningPolicyConfig": {"policies": [
        f"arn:aws:bedrock:us-west-2:{ACCOUNT}:automated-reasoning-policy/abcdefghijkl"]}}, "not supported"),
])
def test_validation_errors(control: Any, unchecked: Any, extra: dict[str, Any], needle: str) -> None:
    params: dict[str, Any] = {"name": unique("invalid"), **MESSAGES, "wordPolicyConfig": words("w")}
    params.update(extra)
    params = {k: v for k, v in params.items() if v is not None}
    before = {g["id"] for g in control.list_guardrails()["guardrails"]}
    code, status, message = error_of(unchecked.create_guardrail, **params)
    assert (code, status) == ("ValidationException", 400)
    assert needle in message
    assert {g["id"] for g in control.list_guardrails()["guardrails"]} == before  # nothing was made


def test_update_validates_and_keeps_the_draft(control: Any) -> None:
    gid = create(control, wordPolicyConfig=words("keepme"))["guardrailId"]
    name = control.get_guardrail(guardrailIdentifier=gid)["name"]
    code, _, _ = error_of(control.update_guardrail, guardrailIdentifier=gid, name=name, **MESSAGES,
                          contentPolicyConfig={"filtersConfig": [
                              {"type": "PROMPT_ATTACK", "inputStrength": "HIGH", "outputStrength": "LOW"}]})
    assert code == "ValidationException"
    assert [w["text"] for w in control.get_guardrail(guardrailIdentifier=gid)["wordPolicy"]["words"]] == ["keepme"]
    code, _, _ = error_of(control.delete_guardrail, guardrailIdentifier=gid, guardrailVersion="DRAFT")
    assert code == "ValidationException"  # only numbered versions are deleted one by one
    control.delete_guardrail(guardrailIdentifier=gid)


def test_guardrail_operations_are_authorised_on_the_guardrail_arn() -> None:
    from llamarock.auth.actions import label_resources
    from llamarock.routes.operations import OperationTable

    table = OperationTable()
    rows = {name: row for name, row in table.implemented("bedrock").items() if "Guardrail" in name}
    assert set(rows) == {"CreateGuardrail", "ListGuardrails", "GetGuardrail", "UpdateGuardrail", "DeleteGuardrail",
                         "CreateGuardrailVersion"}
    assert {rows[n].resource for n in ("GetGuardrail", "UpdateGuardrail", "DeleteGuardrail",
                                       "CreateGuardrailVersion")} == {"guardrail"}
    arn = f"arn:aws:bedrock:us-west-2:{ACCOUNT}:guardrail/abc123"
    assert label_resources("guardrail", {"guardrailIdentifier": "abc123"}, "us-west-2", ACCOUNT) == (arn,)
    assert label_resources("guardrail", {"guardrailIdentifier": arn}, "us-west-2", ACCOUNT) == (arn,)
