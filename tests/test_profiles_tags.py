"""Application inference profiles, tagging and model access, driven by boto3's ``bedrock`` and ``bedrock-runtime``
clients against `llamarock serve`: CreateInferenceProfile / Get / List / Delete, invocation by the profile's ARN on
every runtime operation with usage attributed to the profile and its tags, TagResource / UntagResource /
ListTagsForResource on profiles and provisioned models, GetFoundationModelAvailability and the agreement and
use-case operations."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import urllib.request
import uuid
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.conftest import Server, start_server, stop_server

ACCOUNT = "000000000000"
PROFILE_ARN = re.compile(rf"^arn:aws:bedrock:us-west-2:{ACCOUNT}:application-inference-profile/[a-z0-9]{{12}}$")
FM_8B = "arn:aws:bedrock:us-west-2::foundation-model/meta.llama3-1-8b-instruct-v1:0"
US_33 = f"arn:aws:bedrock:us-west-2:{ACCOUNT}:inference-profile/us.meta.llama3-3-70b-instruct-v1:0"
US_DESTINATIONS = ("us-east-1", "us-east-2", "us-west-2")


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


def create(control: Any, copy_from: str = FM_8B, **extra: Any) -> str:
    arn: str = control.create_inference_profile(
        inferenceProfileName=extra.pop("inferenceProfileName", unique("profile")),
        modelSource={"copyFrom": copy_from}, **extra,
    )["inferenceProfileArn"]
    return arn


# ---------------------------------------------------------------------------------------------------- profiles


def test_create_get_list_delete_an_application_profile(control: Any) -> None:
    name = unique("chatbot")
    created = control.create_inference_profile(
        inferenceProfileName=name, description="Team ML chat bot", modelSource={"copyFrom": FM_8B},
        tags=[{"key": "team", "value": "ml"}, {"key": "cost-center", "value": "42"}],
    )
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201 and created["status"] == "ACTIVE"
    arn = created["inferenceProfileArn"]
    assert PROFILE_ARN.match(arn), arn
    profile_id = arn.rsplit("/", 1)[1]
    got = control.get_inference_profile(inferenceProfileIdentifier=arn)
    assert got["inferenceProfileName"] == name and got["description"] == "Team ML chat bot"
    assert (got["inferenceProfileId"], got["type"], got["status"]) == (profile_id, "APPLICATION", "ACTIVE")
    assert got["models"] == [{"modelArn": FM_8B}]
    assert got["createdAt"] == got["updatedAt"]
    by_id = control.get_inference_profile(inferenceProfileIdentifier=profile_id)
    assert by_id["inferenceProfileArn"] == arn
    applications = control.list_inference_profiles(typeEquals="APPLICATION")["inferenceProfileSummaries"]
    assert arn in {p["inferenceProfileArn"] for p in applications}
    assert all(p["type"] == "APPLICATION" for p in applications)
    system = control.list_inference_profiles()["inferenceProfileSummaries"]
    assert arn not in {p["inferenceProfileArn"] for p in system} and all(p["type"] == "SYSTEM_DEFINED" for p in system)
    assert sorted(map(tuple, (t.values() for t in control.list_tags_for_resource(resourceARN=arn)["tags"]))) == [
        ("cost-center", "42"), ("team", "ml")
    ]
    control.delete_inference_profile(inferenceProfileIdentifier=arn)
    code, status, _ = error_of(control.get_inference_profile, inferenceProfileIdentifier=arn)
    assert (code, status) == ("ResourceNotFoundException", 404)
    code, status, _ = error_of(control.list_tags_for_resource, resourceARN=arn)
    assert (code, status) == ("ResourceNotFoundException", 404)
    code, _, _ = error_of(control.delete_inference_profile, inferenceProfileIdentifier=arn)
    assert code == "ResourceNotFoundException"


def test_a_profile_copied_from_a_system_profile_routes_to_its_regions(control: Any) -> None:
    arn = create(control, US_33)
    models = control.get_inference_profile(inferenceProfileIdentifier=arn)["models"]
    assert models == [
        {"modelArn": f"arn:aws:bedrock:{r}::foundation-model/meta.llama3-3-70b-instruct-v1:0"} for r in US_DESTINATIONS
    ]


def test_create_is_idempotent_by_client_request_token_and_names_are_unique(control: Any) -> None:
    name, token = unique("idem"), uuid.uuid4().hex
    first = create(control, inferenceProfileName=name, clientRequestToken=token)
    assert create(control, inferenceProfileName=name, clientRequestToken=token) == first
    code, status, message = error_of(control.create_inference_profile, inferenceProfileName=unique("other"),
                                     modelSource={"copyFrom": FM_8B}, clientRequestToken=token)
    assert (code, status) == ("ConflictException", 400) and "clientRequestToken" in message
    code, _, message = error_of(control.create_inference_profile, inferenceProfileName=name,
                                modelSource={"copyFrom": FM_8B})
    assert code == "ConflictException" and name in message


@pytest.mark.parametrize("copy_from, code, words", [
    # Llama 3.3 is offered in us-west-2 on demand; in us-east-1 only through its us. profile: same rules as invoking.
    ("arn:aws:bedrock:us-west-2::foundation-model/meta.nope-v1:0", "ResourceNotFoundException", "meta.nope-v1:0"),
    ("arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-1-8b-instruct-v1:0", "ValidationException",
     "us-east-1"),
    (f"arn:aws:bedrock:us-west-2:{ACCOUNT}:inference-profile/eu.meta.llama3-2-1b-instruct-v1:0",
     "ValidationException", "eu."),
    ("arn:aws:bedrock:us-west-2::foundation-model/meta.llama4-scout-17b-instruct-v1:0", "ValidationException",
     "on-demand throughput isn\u2019t supported"),
])
def test_create_refuses_sources_the_region_cannot_invoke(control: Any, copy_from: str, code: str,
                                                         words: str) -> None:
    got, _, message = error_of(control.create_inference_profile, inferenceProfileName=unique("bad"),
                               modelSource={"copyFrom": copy_from})
    assert got == code and words in message


def test_create_validates_the_name_and_the_source_pattern(control: Any) -> None:
    code, _, message = error_of(control.create_inference_profile, inferenceProfileName="bad name!",
                                modelSource={"copyFrom": FM_8B})
    assert code == "ValidationException" and "at 'inferenceProfileName'" in message
    code, _, message = error_of(control.create_inference_profile, inferenceProfileName=unique("p"),
                                modelSource={"copyFrom": "meta.llama3-1-8b-instruct-v1:0"})
    assert code == "ValidationException" and "modelSource.copyFrom" in message


def test_system_profiles_cannot_be_deleted(control: Any) -> None:
    code, _, message = error_of(control.delete_inference_profile,
                                inferenceProfileIdentifier="us.meta.llama3-3-70b-instruct-v1:0")
    assert code == "ValidationException" and "system-defined" in message


# ---------------------------------------------------------------------------------------------------- invocation


def _usage_by_tag(server: Server) -> dict[str, dict[str, Any]]:
    with urllib.request.urlopen(server.url + "/llamarock/usage?by=tag", timeout=10) as response:
        return {row["tag"]: row for row in json.loads(response.read())["rows"]}


def test_every_runtime_operation_invokes_by_profile_arn_and_usage_goes_to_its_tags(
    fake_server: Server, control: Any
) -> None:
    team = unique("team")
    arn = create(control, US_33, tags=[{"key": "team", "value": team}])
    runtime = fake_server.client()
    messages = [{"role": "user", "content": [{"text": "hello profile"}]}]
    invoked = runtime.invoke_model(modelId=arn, body=json.dumps({"prompt": "hello", "max_gen_len": 4}))
    assert json.loads(invoked["body"].read())["generation_token_count"] >= 1
    assert invoked["ResponseMetadata"]["HTTPHeaders"]["x-llamarock-served-by"] == "fake-echo"
    streamed = runtime.invoke_model_with_response_stream(modelId=arn, body=json.dumps({"prompt": "hi"}))
    assert [event for event in streamed["body"] if "chunk" in event]
    answer = runtime.converse(modelId=arn, messages=messages, inferenceConfig={"maxTokens": 8})
    assert answer["usage"]["outputTokens"] >= 1
    events = list(runtime.converse_stream(modelId=arn, messages=messages)["stream"])
    assert "metadata" in events[-1]
    assert runtime.count_tokens(modelId=arn, input={"converse": {"messages": messages}})["inputTokens"] > 0
    rows = _usage_by_tag(fake_server)
    assert rows[f"team={team}"]["invocations"] == 4  # CountTokens is not an invocation
    assert rows[f"inferenceProfileArn={arn}"]["invocations"] == 4
    assert rows[f"team={team}"]["outputTokens"] == rows[f"inferenceProfileArn={arn}"]["outputTokens"] > 0
    # CloudWatch's ModelId dimension is the identifier as sent: the profile's ARN.
    with urllib.request.urlopen(fake_server.url + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert f'bedrock_invocations_total{{ModelId="{arn}"}} 4.0' in metrics
    # A tag added later attributes the calls after it.
    control.tag_resource(resourceARN=arn, tags=[{"key": "project", "value": team}])
    runtime.converse(modelId=arn, messages=messages, inferenceConfig={"maxTokens": 2})
    rows = _usage_by_tag(fake_server)
    assert rows[f"project={team}"]["invocations"] == 1 and rows[f"team={team}"]["invocations"] == 5


def test_profile_arns_that_name_nothing_here_are_refused(fake_server: Server, control: Any) -> None:
    runtime = fake_server.client()
    missing = f"arn:aws:bedrock:us-west-2:{ACCOUNT}:application-inference-profile/abcdefghijkl"
    code, status, _ = error_of(runtime.invoke_model, modelId=missing, body=json.dumps({"prompt": "x"}))
    assert (code, status) == ("ResourceNotFoundException", 404)
    arn = create(control)
    east = fake_server.client(region="us-east-1")
    code, status, message = error_of(east.converse, modelId=arn,
                                     messages=[{"role": "user", "content": [{"text": "x"}]}])
    assert (code, status) == ("ValidationException", 400) and "us-west-2" in message
    other_account = arn.replace(ACCOUNT, "123456789012")
    code, _, _ = error_of(runtime.invoke_model, modelId=other_account, body=json.dumps({"prompt": "x"}))
    assert code == "ValidationException"


# ---------------------------------------------------------------------------------------------------- tags


def test_tag_and_untag_a_profile(control: Any) -> None:
    arn = create(control, tags=[{"key": "team", "value": "ml"}])
    control.tag_resource(resourceARN=arn, tags=[{"key": "team", "value": "search"}, {"key": "env", "value": ""}])
    tags = {t["key"]: t["value"] for t in control.list_tags_for_resource(resourceARN=arn)["tags"]}
    assert tags == {"team": "search", "env": ""}
    control.untag_resource(resourceARN=arn, tagKeys=["env", "not-there"])
    assert control.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "search"}]


def test_tag_limits_and_validation(control: Any) -> None:
    arn = create(control)
    many = [{"key": f"k{i}", "value": "v"} for i in range(51)]
    code, status, _ = error_of(control.tag_resource, resourceARN=arn, tags=many)
    assert (code, status) == ("TooManyTagsException", 400)
    assert control.list_tags_for_resource(resourceARN=arn)["tags"] == []  # nothing was written
    control.tag_resource(resourceARN=arn, tags=many[:50])
    code, _, _ = error_of(control.tag_resource, resourceARN=arn, tags=[{"key": "one-more", "value": "v"}])
    assert code == "TooManyTagsException"
    for bad in ({"key": "bad!", "value": "v"}, {"key": "k", "value": "bad#"}, {"key": "aws:reserved", "value": "v"}):
        code, status, _ = error_of(control.tag_resource, resourceARN=arn, tags=[bad])
        assert (code, status) == ("ValidationException", 400), bad
    code, _, message = error_of(control.tag_resource, resourceARN=arn, tags=[{"key": "k" * 129, "value": "v"}])
    assert code == "ValidationException" and "128" in message


@pytest.mark.parametrize("arn", [
    f"arn:aws:bedrock:us-west-2:{ACCOUNT}:application-inference-profile/abcdefghijkl",
    f"arn:aws:bedrock:us-west-2:{ACCOUNT}:provisioned-model/abcdefghijkl",
    f"arn:aws:bedrock:us-west-2:{ACCOUNT}:guardrail/abcdefghijkl",
    "arn:aws:bedrock:us-west-2:123456789012:application-inference-profile/abcdefghijkl",
    "not-an-arn-but-long-enough",
])
def test_unknown_resources_are_not_found(control: Any, arn: str) -> None:
    for call, extra in ((control.list_tags_for_resource, {}), (control.untag_resource, {"tagKeys": ["k"]}),
                        (control.tag_resource, {"tags": [{"key": "k", "value": "v"}]})):
        code, status, _ = error_of(call, resourceARN=arn, **extra)
        assert (code, status) == ("ResourceNotFoundException", 404)


def test_a_profile_of_another_region_is_not_found_from_this_one(fake_server: Server, control: Any) -> None:
    arn = create(control)
    code, _, message = error_of(fake_server.client("bedrock", "us-east-1").list_tags_for_resource, resourceARN=arn)
    assert code == "ResourceNotFoundException" and "us-east-1" in message


def test_provisioned_models_are_tagged_at_create_and_by_arn(control: Any) -> None:
    arn = control.create_provisioned_model_throughput(
        provisionedModelName=unique("pt"), modelId="meta.llama3-1-8b-instruct-v1:0", modelUnits=1,
        tags=[{"key": "team", "value": "ml"}],
    )["provisionedModelArn"]
    try:
        assert control.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "ml"}]
        control.tag_resource(resourceARN=arn, tags=[{"key": "env", "value": "prod"}])
        assert len(control.list_tags_for_resource(resourceARN=arn)["tags"]) == 2
        code, _, _ = error_of(control.create_provisioned_model_throughput, provisionedModelName=unique("pt"),
                              modelId="meta.llama3-1-8b-instruct-v1:0", modelUnits=1,
                              tags=[{"key": "bad!", "value": "v"}])
        assert code == "ValidationException"
    finally:
        control.delete_provisioned_model_throughput(provisionedModelId=arn)
    code, _, _ = error_of(control.list_tags_for_resource, resourceARN=arn)
    assert code == "ResourceNotFoundException"


# ---------------------------------------------------------------------------------------------------- model access


def test_every_catalog_model_is_available_and_authorised(fake_server: Server, control: Any) -> None:
    got = control.get_foundation_model_availability(modelId="meta.llama3-1-8b-instruct-v1:0")
    assert got["agreementAvailability"] == {"status": "AVAILABLE"}
    assert (got["authorizationStatus"], got["entitlementAvailability"], got["regionAvailability"]) == (
        "AUTHORIZED", "AVAILABLE", "AVAILABLE"
    )
    europe = fake_server.client("bedrock", "eu-west-1").get_foundation_model_availability(
        modelId="meta.llama3-1-8b-instruct-v1:0")
    assert europe["regionAvailability"] == "NOT_AVAILABLE"
    code, status, _ = error_of(control.get_foundation_model_availability, modelId="meta.nope-v1:0")
    assert (code, status) == ("ResourceNotFoundException", 404)


def test_agreements_are_recorded(control: Any) -> None:
    model = "meta.llama4-maverick-17b-instruct-v1:0"
    offers = control.list_foundation_model_agreement_offers(modelId=model)
    assert offers["modelId"] == model and len(offers["offers"]) == 1
    offer = offers["offers"][0]
    assert offer["termDetails"]["legalTerm"]["url"].startswith("https://")
    assert {c["dimension"]: c["price"] for c in offer["termDetails"]["usageBasedPricingTerm"]["rateCard"]} == {
        "InputTokens": "0.24", "OutputTokens": "0.97"
    }
    code, _, _ = error_of(control.create_foundation_model_agreement, modelId=model, offerToken="made-up")
    assert code == "ValidationException"
    created = control.create_foundation_model_agreement(modelId=model, offerToken=offer["offerToken"])
    assert created["modelId"] == model and created["ResponseMetadata"]["HTTPStatusCode"] == 202
    control.delete_foundation_model_agreement(modelId=model)
    code, status, _ = error_of(control.delete_foundation_model_agreement, modelId=model)
    assert (code, status) == ("ResourceNotFoundException", 404)


def test_the_use_case_reads_back_what_was_put(tmp_path_factory: pytest.TempPathFactory) -> None:
    srv = start_server(tmp_path_factory.mktemp("usecase"), "--engine", "fake")
    try:
        control = srv.client("bedrock")
        code, status, _ = error_of(control.get_use_case_for_model_access)
        assert (code, status) == ("ResourceNotFoundException", 404)
        form = json.dumps({"companyName": "Example", "useCase": "support chat bot"}).encode()
        assert control.put_use_case_for_model_access(formData=form)["ResponseMetadata"]["HTTPStatusCode"] == 201
        assert control.get_use_case_for_model_access()["formData"] == form
    finally:
        stop_server(srv)


# ---------------------------------------------------------------------------------------------------- restarts


def test_profiles_and_tags_survive_a_restart(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("restart")
    srv = start_server(tmp, "--engine", "fake")
    arn = create(srv.client("bedrock"), tags=[{"key": "team", "value": "ml"}])
    stop_server(srv)
    srv = start_server(tmp, "--engine", "fake")
    try:
        control = srv.client("bedrock")
        assert control.get_inference_profile(inferenceProfileIdentifier=arn)["models"] == [{"modelArn": FM_8B}]
        assert control.list_tags_for_resource(resourceARN=arn)["tags"] == [{"key": "team", "value": "ml"}]
        answer = srv.client().converse(modelId=arn, messages=[{"role": "user", "content": [{"text": "hi"}]}])
        assert answer["usage"]["outputTokens"] >= 1
    finally:
        stop_server(srv)


# ---------------------------------------------------------------------------------------------------- Llama 4

SCOUT = "meta.llama4-scout-17b-instruct-v1:0"
def _pixel() -> bytes:
    """A real one-pixel PNG (images are decoded and checked before any deployment sees them)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (1, 1), (200, 30, 30)).save(out, format="PNG")
    return out.getvalue()


PIXEL = _pixel()


def test_llama_4_serves_through_its_profile_and_refuses_images_on_a_text_deployment(fake_server: Server) -> None:
    runtime = fake_server.client()
    messages = [{"role": "user", "content": [{"text": "hello"}]}]
    answer = runtime.converse(modelId=f"us.{SCOUT}", messages=messages)
    assert answer["ResponseMetadata"]["HTTPHeaders"]["x-llamarock-served-by"] == "fake-default"
    code, _, message = error_of(runtime.converse, modelId=SCOUT, messages=messages)
    assert code == "ValidationException" and "on-demand throughput isn\u2019t supported" in message
    with_image = [{"role": "user", "content": [{"text": "what is this?"},
                                               {"image": {"format": "png", "source": {"bytes": PIXEL}}}]}]
    code, status, message = error_of(runtime.converse, modelId=f"us.{SCOUT}", messages=with_image)
    assert (code, status) == ("ValidationException", 400)
    assert "fake-default, which doesn't support image input" in message


# ---------------------------------------------------------------------------------------------------- IAM


def test_iam_policies_govern_a_profile_by_its_arn(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp = tmp_path_factory.mktemp("iam")
    srv = start_server(tmp, "--engine", "fake", "--auth", "enforce")
    try:
        def key(principal: str, policy: dict[str, Any] | None = None) -> dict[str, str]:
            args = ["create", "--principal", principal, "--json", "--data-dir", str(tmp / "data")]
            if policy is not None:
                (tmp / f"{principal}.json").write_text(json.dumps(policy))
                args += ["--policy", str(tmp / f"{principal}.json")]
            done = subprocess.run([sys.executable, "-m", "llamarock", "keys", *args], capture_output=True, text=True,
                                  timeout=60, check=True)
            found: dict[str, str] = json.loads(done.stdout)
            return found

        def client(service: str, creds: dict[str, str]) -> Any:
            return boto3.client(service, region_name="us-west-2", endpoint_url=srv.url,
                                aws_access_key_id=creds["accessKeyId"],
                                aws_secret_access_key=creds["secretAccessKey"],
                                config=Config(retries={"mode": "standard", "max_attempts": 1}))

        admin = key("admin")
        arn = create(client("bedrock", admin), tags=[{"key": "team", "value": "ml"}])
        app = key("app", {"Version": "2012-10-17", "Statement": [{
            "Effect": "Allow", "Action": ["bedrock:InvokeModel", "bedrock:TagResource"],
            "Resource": "arn:aws:bedrock:*:*:application-inference-profile/*",
        }]})
        runtime, control = client("bedrock-runtime", app), client("bedrock", app)
        messages = [{"role": "user", "content": [{"text": "hi"}]}]
        assert runtime.converse(modelId=arn, messages=messages)["usage"]["outputTokens"] >= 1
        code, status, message = error_of(runtime.converse, modelId="meta.llama3-1-8b-instruct-v1:0",
                                         messages=messages)
        assert (code, status) == ("AccessDeniedException", 403) and "foundation-model/" in message
        control.tag_resource(resourceARN=arn, tags=[{"key": "env", "value": "prod"}])
        code, status, message = error_of(control.list_tags_for_resource, resourceARN=arn)
        assert (code, status) == ("AccessDeniedException", 403)
        assert f"bedrock:ListTagsForResource on resource: {arn}" in message
        profile_id = arn.rsplit("/", 1)[1]
        code, _, message = error_of(control.get_inference_profile, inferenceProfileIdentifier=profile_id)
        assert code == "AccessDeniedException" and f"on resource: {arn}" in message
    finally:
        stop_server(srv)
