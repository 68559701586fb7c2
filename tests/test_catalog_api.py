"""The catalog operations of the ``bedrock`` control plane, driven by boto3's ``bedrock`` client against
`llamarock serve`: ListFoundationModels, GetFoundationModel, ListInferenceProfiles, GetInferenceProfile."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from llamarock.codec.service_model import service_model
from tests.conftest import Server, start_server, stop_server

ACCOUNT = "123456789012"
# The product spec's twelve models, its two Vision models, and its fine-tunable Llama 3.2 series.
SPEC_MODELS = {
    "meta.llama3-3-70b-instruct-v1:0", "meta.llama3-2-90b-instruct-v1:0", "meta.llama3-2-11b-instruct-v1:0",
    "meta.llama3-2-3b-instruct-v1:0", "meta.llama3-2-1b-instruct-v1:0", "meta.llama3-1-405b-instruct-v1:0",
    "meta.llama3-1-70b-instruct-v1:0", "meta.llama3-1-8b-instruct-v1:0", "meta.llama3-70b-instruct-v1:0",
    "meta.llama3-8b-instruct-v1:0", "meta.llama2-13b-chat-v1", "meta.llama2-70b-v1",
}
# Llama 4 (the spec's §9): text and image in, only through the us. inference profile.
LLAMA_4 = {"meta.llama4-scout-17b-instruct-v1:0", "meta.llama4-maverick-17b-instruct-v1:0"}
ALL_MODELS = SPEC_MODELS | LLAMA_4
# The embedding models (docs/embeddings.md), on demand only; Titan and Cohere are offered in Europe and Sydney too.
TITAN = {"amazon.titan-embed-text-v2:0", "amazon.titan-embed-text-v1"}
COHERE = {"cohere.embed-english-v3", "cohere.embed-multilingual-v3"}
EMBEDDING = TITAN | COHERE
VISION = {"meta.llama3-2-90b-instruct-v1:0", "meta.llama3-2-11b-instruct-v1:0"} | LLAMA_4
LLAMA_32 = {m for m in SPEC_MODELS if m.startswith("meta.llama3-2-")}
LLAMA_3X = {m for m in SPEC_MODELS if m.startswith(("meta.llama3-1-", "meta.llama3-2-", "meta.llama3-3-"))}
# Llama 2 reached its end of life on Bedrock, Llama 3 is Legacy, Llama 3.1 405B Legacy since 2026-07-07.
LEGACY = {m for m in SPEC_MODELS if m.startswith(("meta.llama2", "meta.llama3-8b", "meta.llama3-70b"))} | {
    "meta.llama3-1-405b-instruct-v1:0"
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("catalog"), "--engine", "fake", config=f'account_id = "{ACCOUNT}"\n')
    yield srv
    stop_server(srv)


def bedrock(server: Server, region: str = "us-west-2") -> Any:
    return server.client("bedrock", region)


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


def by_id(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["modelId"]: s for s in summaries}


def test_meta_lists_the_spec_models_with_their_modalities_customizations_and_inference_types(served: Server) -> None:
    models = by_id(bedrock(served).list_foundation_models(byProvider="Meta")["modelSummaries"])
    assert set(models) == ALL_MODELS
    for model_id, model in models.items():
        assert model["modelArn"] == f"arn:aws:bedrock:us-west-2::foundation-model/{model_id}"
        assert model["providerName"] == "Meta"
        assert model["inputModalities"] == (["TEXT", "IMAGE"] if model_id in VISION else ["TEXT"])
        assert model["outputModalities"] == ["TEXT"]
        assert model["responseStreamingSupported"] is True
        fine_tunable = model_id in LLAMA_32 or model_id == "meta.llama2-70b-v1"
        assert model["customizationsSupported"] == (["FINE_TUNING"] if fine_tunable else [])
        # us-west-2 offers every catalog model but Llama 4 on demand; Llama 3.x and 4 through the us. profile.
        profile = ["INFERENCE_PROFILE"] if model_id in LLAMA_3X | LLAMA_4 else []
        on_demand = [] if model_id in LLAMA_4 else ["ON_DEMAND"]
        assert model["inferenceTypesSupported"] == [*on_demand, "PROVISIONED", *profile]
        lifecycle = model["modelLifecycle"]
        assert lifecycle["status"] == ("LEGACY" if model_id in LEGACY else "ACTIVE")
        assert lifecycle["startOfLifeTime"].tzinfo is not None
        ended = lifecycle.get("endOfLifeTime")
        assert (ended is not None) == model_id.startswith("meta.llama2")
    assert models["meta.llama3-1-70b-instruct-v1:0"]["modelName"] == "Llama 3.1 70B Instruct"


def test_filters(served: Server) -> None:
    client = bedrock(served)

    def ids(region: str = "us-west-2", **filters: str) -> set[str]:
        client_ = client if region == "us-west-2" else bedrock(served, region)
        return {s["modelId"] for s in client_.list_foundation_models(**filters)["modelSummaries"]}

    assert ids(byProvider="meta") == ids(byProvider="META") == ALL_MODELS
    assert ids() == ALL_MODELS | EMBEDDING
    assert ids(byProvider="Amazon") == TITAN
    assert ids(byOutputModality="TEXT") == ALL_MODELS
    assert ids(byOutputModality="IMAGE") == set()
    assert ids(byOutputModality="EMBEDDING") == EMBEDDING
    assert ids(byCustomizationType="FINE_TUNING") == LLAMA_32 | {"meta.llama2-70b-v1"}
    assert ids(byCustomizationType="DISTILLATION") == set()
    assert ids(byInferenceType="PROVISIONED") == ALL_MODELS
    assert ids(byInferenceType="ON_DEMAND") == SPEC_MODELS | EMBEDDING
    # us-east-1 offers Llama 3 and 2 on demand; Llama 3.1, 3.2, 3.3 and 4 only through the us. inference profiles.
    assert ids("us-east-1") == ALL_MODELS | EMBEDDING
    assert ids("us-east-1", byInferenceType="ON_DEMAND") == (SPEC_MODELS - LLAMA_3X) | EMBEDDING
    assert ids("us-east-1", byProvider="Meta", byInferenceType="ON_DEMAND", byOutputModality="TEXT") == (
        SPEC_MODELS - LLAMA_3X
    )
    # eu-west-1 offers Llama 3.2 1B and 3B through the eu. profiles; ap-southeast-2 none of them.
    europe = bedrock(served, "eu-west-1").list_foundation_models(byProvider="Meta")["modelSummaries"]
    assert {s["modelId"] for s in europe} == {"meta.llama3-2-1b-instruct-v1:0", "meta.llama3-2-3b-instruct-v1:0"}
    assert all(s["inferenceTypesSupported"] == ["PROVISIONED", "INFERENCE_PROFILE"] for s in europe)
    assert all(s["modelArn"].startswith("arn:aws:bedrock:eu-west-1::foundation-model/") for s in europe)
    assert ids("ap-southeast-2", byProvider="Meta") == set()
    assert ids("eu-west-1", byOutputModality="EMBEDDING") == {"amazon.titan-embed-text-v2:0"} | COHERE
    assert ids("ap-southeast-2") == {"amazon.titan-embed-text-v2:0"} | COHERE


@pytest.mark.parametrize("filters, member", [
    ({"byInferenceType": "INFERENCE_PROFILE"}, "byInferenceType"),
    ({"byOutputModality": "AUDIO"}, "byOutputModality"),
    ({"byCustomizationType": "LORA"}, "byCustomizationType"),
    ({"byProvider": "Meta!"}, "byProvider"),
])
def test_filter_values_are_validated(served: Server, filters: dict[str, str], member: str) -> None:
    code, status, message = error_of(bedrock(served).list_foundation_models, **filters)
    assert (code, status) == ("ValidationException", 400)
    assert message.startswith("1 validation error detected: ") and f"at '{member}'" in message


def test_get_foundation_model_by_id_and_by_arn(served: Server) -> None:
    client = bedrock(served, "us-east-1")
    listed = by_id(client.list_foundation_models()["modelSummaries"])
    for model_id in ("meta.llama3-2-11b-instruct-v1:0", "meta.llama3-8b-instruct-v1:0"):
        details = client.get_foundation_model(modelIdentifier=model_id)["modelDetails"]
        assert details == listed[model_id]
        assert details["modelArn"] == f"arn:aws:bedrock:us-east-1::foundation-model/{model_id}"
        assert client.get_foundation_model(modelIdentifier=details["modelArn"])["modelDetails"] == details
    vision = listed["meta.llama3-2-11b-instruct-v1:0"]
    assert vision["inputModalities"] == ["TEXT", "IMAGE"] and vision["customizationsSupported"] == ["FINE_TUNING"]
    assert vision["inferenceTypesSupported"] == ["PROVISIONED", "INFERENCE_PROFILE"]


@pytest.mark.parametrize("region, identifier, code, status, words", [
    ("us-west-2", "meta.llama9-8b-instruct-v1:0", "ValidationException", 400, "Could not find model with identifier"),
    ("us-west-2", "us.meta.llama3-1-8b-instruct-v1:0", "ValidationException", 400, "Could not find model"),
    ("eu-west-1", "meta.llama3-1-70b-instruct-v1:0", "ValidationException", 400, "in eu-west-1"),
    ("us-west-2", "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0", "ValidationException",
     400, "signed for us-west-2"),
    ("us-west-2", "llama", "ValidationException", 400, "failed to satisfy constraint"),
])
def test_get_foundation_model_errors(
    served: Server, region: str, identifier: str, code: str, status: int, words: str
) -> None:
    got = error_of(bedrock(served, region).get_foundation_model, modelIdentifier=identifier)
    assert got[:2] == (code, status)
    assert words in got[2]


def test_system_inference_profiles(served: Server) -> None:
    client = bedrock(served, "us-east-2")
    profiles = {p["inferenceProfileId"]: p for p in client.list_inference_profiles()["inferenceProfileSummaries"]}
    assert set(profiles) == {f"us.{m}" for m in LLAMA_3X | LLAMA_4}
    for profile_id, profile in profiles.items():
        assert profile["inferenceProfileArn"] == f"arn:aws:bedrock:us-east-2:{ACCOUNT}:inference-profile/{profile_id}"
        assert (profile["status"], profile["type"]) == ("ACTIVE", "SYSTEM_DEFINED")
        assert profile["inferenceProfileName"].startswith(("US Meta Llama 3.", "US Meta Llama 4 "))
        got = client.get_inference_profile(inferenceProfileIdentifier=profile_id)
        got.pop("ResponseMetadata")
        assert got == profile
    # One foundation-model ARN per destination region: Llama 3.1 runs in us-west-2 only, Llama 3.2 in three regions.
    assert [m["modelArn"] for m in profiles["us.meta.llama3-1-8b-instruct-v1:0"]["models"]] == [
        "arn:aws:bedrock:us-west-2::foundation-model/meta.llama3-1-8b-instruct-v1:0"
    ]
    assert [m["modelArn"] for m in profiles["us.meta.llama3-2-11b-instruct-v1:0"]["models"]] == [
        f"arn:aws:bedrock:{r}::foundation-model/meta.llama3-2-11b-instruct-v1:0"
        for r in ("us-east-1", "us-east-2", "us-west-2")
    ]
    europe = bedrock(served, "eu-central-1").list_inference_profiles()["inferenceProfileSummaries"]
    assert {p["inferenceProfileId"] for p in europe} == {
        "eu.meta.llama3-2-1b-instruct-v1:0", "eu.meta.llama3-2-3b-instruct-v1:0"
    }
    assert {m["modelArn"].split(":")[3] for m in europe[0]["models"]} == {"eu-central-1", "eu-west-1", "eu-west-3"}
    assert bedrock(served, "ap-northeast-1").list_inference_profiles()["inferenceProfileSummaries"] == []
    assert client.list_inference_profiles(typeEquals="APPLICATION")["inferenceProfileSummaries"] == []
    assert len(client.list_inference_profiles(typeEquals="SYSTEM_DEFINED")["inferenceProfileSummaries"]) == 10


def test_get_inference_profile_by_id_and_by_arn(served: Server) -> None:
    client = bedrock(served)
    by_profile_id = client.get_inference_profile(inferenceProfileIdentifier="us.meta.llama3-3-70b-instruct-v1:0")
    arn = f"arn:aws:bedrock:us-west-2:{ACCOUNT}:inference-profile/us.meta.llama3-3-70b-instruct-v1:0"
    assert by_profile_id["inferenceProfileArn"] == arn
    by_arn = client.get_inference_profile(inferenceProfileIdentifier=arn)
    by_profile_id.pop("ResponseMetadata")
    by_arn.pop("ResponseMetadata")
    assert by_arn == by_profile_id
    assert by_arn["inferenceProfileName"] == "US Meta Llama 3.3 70B Instruct"
    assert len(by_arn["models"]) == 3


@pytest.mark.parametrize("region, identifier", [
    ("us-west-2", "us.meta.llama9-70b-instruct-v1:0"),
    ("us-west-2", "eu.meta.llama3-2-1b-instruct-v1:0"),
    ("eu-west-1", "us.meta.llama3-2-1b-instruct-v1:0"),
    ("us-west-2", "us.meta.llama3-8b-instruct-v1:0"),
    ("us-west-2", "meta.llama3-1-8b-instruct-v1:0"),
    ("us-west-2", f"arn:aws:bedrock:us-east-1:{ACCOUNT}:inference-profile/us.meta.llama3-1-8b-instruct-v1:0"),
    ("us-west-2", f"arn:aws:bedrock:us-west-2:{ACCOUNT}:application-inference-profile/abcd1234efgh"),
])
def test_unknown_inference_profile_is_not_found(served: Server, region: str, identifier: str) -> None:
    code, status, message = error_of(bedrock(served, region).get_inference_profile,
                                     inferenceProfileIdentifier=identifier)
    assert (code, status) == ("ResourceNotFoundException", 404)
    assert identifier in message and "ListInferenceProfiles" in message


def test_inference_profiles_paginate(served: Server) -> None:
    client = bedrock(served)
    everything = client.list_inference_profiles()["inferenceProfileSummaries"]
    pages, token = [], None
    while True:
        response = client.list_inference_profiles(maxResults=3, **({"nextToken": token} if token else {}))
        pages.append(response["inferenceProfileSummaries"])
        token = response.get("nextToken")
        if token is None:
            break
    assert [len(p) for p in pages] == [3, 3, 3, 1]
    assert [p for page in pages for p in page] == everything
    paginated = client.get_paginator("list_inference_profiles").paginate(PaginationConfig={"PageSize": 5})
    assert [p for page in paginated for p in page["inferenceProfileSummaries"]] == everything


@pytest.mark.parametrize("kwargs, words", [
    ({"nextToken": "not-a-token"}, "nextToken is invalid"),
    ({"maxResults": 1001}, "Member must have value less than or equal to 1000"),
    ({"typeEquals": "CUSTOM"}, "Member must satisfy enum value set: [SYSTEM_DEFINED, APPLICATION]"),
])
def test_list_inference_profiles_validation(served: Server, kwargs: dict[str, Any], words: str) -> None:
    code, status, message = error_of(bedrock(served).list_inference_profiles, **kwargs)
    assert (code, status) == ("ValidationException", 400)
    assert words in message


def _raw(server: Server, path: str) -> Any:
    with urllib.request.urlopen(server.url + path, timeout=10) as response:
        return json.loads(response.read())


def test_wire_bodies_hold_only_the_shapes_members(served: Server) -> None:
    model = service_model("bedrock")
    summary = model.shape_for("FoundationModelSummary")
    profile = model.shape_for("InferenceProfileSummary")
    for item in _raw(served, "/foundation-models")["modelSummaries"]:
        assert set(item) <= set(summary.members) and set(summary.required_members) <= set(item)
        assert set(item["modelLifecycle"]) <= set(model.shape_for("FoundationModelLifecycle").members)
    details = _raw(served, "/foundation-models/meta.llama3-8b-instruct-v1%3A0")
    assert set(details) == {"modelDetails"}
    assert set(details["modelDetails"]) <= set(model.shape_for("FoundationModelDetails").members)
    listed = _raw(served, "/inference-profiles?maxResults=2")
    assert set(listed) == {"inferenceProfileSummaries", "nextToken"}
    for item in listed["inferenceProfileSummaries"]:
        assert set(item) <= set(profile.members) and set(profile.required_members) <= set(item)
    got = _raw(served, "/inference-profiles/us.meta.llama3-1-8b-instruct-v1%3A0")
    assert set(got) <= set(model.shape_for("GetInferenceProfileResponse").members)


def test_unsigned_requests_answer_for_the_servers_region(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--engine", "fake", "--region", "us-east-1")
    try:
        details = _raw(server, "/foundation-models/meta.llama3-8b-instruct-v1%3A0")["modelDetails"]
        assert details["modelArn"] == "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-8b-instruct-v1:0"
        assert details["inferenceTypesSupported"] == ["ON_DEMAND", "PROVISIONED"]
    finally:
        stop_server(server)


def test_llama_4_is_offered_through_the_us_profile(served: Server) -> None:
    client = bedrock(served, "us-east-1")
    for model_id in LLAMA_4:
        details = client.get_foundation_model(modelIdentifier=model_id)["modelDetails"]
        assert details["inputModalities"] == ["TEXT", "IMAGE"] and details["outputModalities"] == ["TEXT"]
        assert details["inferenceTypesSupported"] == ["PROVISIONED", "INFERENCE_PROFILE"]
        assert details["modelLifecycle"]["status"] == "ACTIVE"
        profile = client.get_inference_profile(inferenceProfileIdentifier=f"us.{model_id}")
        assert [m["modelArn"] for m in profile["models"]] == [
            f"arn:aws:bedrock:{r}::foundation-model/{model_id}"
            for r in ("us-east-1", "us-east-2", "us-west-1", "us-west-2")
        ]
    assert {s["modelId"] for s in bedrock(served, "eu-west-1").list_foundation_models()["modelSummaries"]} & (
        LLAMA_4) == set()


def test_lifecycle_dates_are_bedrocks(served: Server) -> None:
    client = bedrock(served)

    def lifecycle(model_id: str) -> dict[str, Any]:
        found: dict[str, Any] = client.get_foundation_model(modelIdentifier=model_id)["modelDetails"]["modelLifecycle"]
        return found

    assert lifecycle("meta.llama2-13b-chat-v1") == {
        "status": "LEGACY", "startOfLifeTime": datetime(2023, 11, 14, tzinfo=UTC),
        "endOfLifeTime": datetime(2024, 8, 12, tzinfo=UTC),
    }
    assert lifecycle("meta.llama3-1-405b-instruct-v1:0") == {
        "status": "LEGACY", "startOfLifeTime": datetime(2024, 7, 23, tzinfo=UTC),
        "legacyTime": datetime(2026, 7, 7, tzinfo=UTC),
    }
    assert lifecycle("meta.llama3-8b-instruct-v1:0")["status"] == "LEGACY"
    assert lifecycle("meta.llama3-1-8b-instruct-v1:0") == {
        "status": "ACTIVE", "startOfLifeTime": datetime(2024, 7, 23, tzinfo=UTC),
    }


def test_end_of_life_is_enforced_when_configured(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--engine", "fake", config="enforce_end_of_life = true\n")
    try:
        runtime = server.client()
        messages = [{"role": "user", "content": [{"text": "hi"}]}]
        ended = (
            "This model version has reached the end of its life. Please refer to the AWS documentation for more "
            "details."
        )
        for call, kwargs in (
            (runtime.invoke_model, {"body": json.dumps({"prompt": "hi"})}),
            (runtime.converse, {"messages": messages}),
            (runtime.count_tokens, {"input": {"converse": {"messages": messages}}}),
        ):
            for model_id in ("meta.llama2-13b-chat-v1",
                             "arn:aws:bedrock:us-west-2::foundation-model/meta.llama2-70b-v1"):
                assert error_of(call, modelId=model_id, **kwargs) == ("ResourceNotFoundException", 404, ended)
        # Legacy models that have not reached their end of life still serve.
        assert runtime.converse(modelId="meta.llama3-8b-instruct-v1:0", messages=messages)["usage"]["outputTokens"]
        client = bedrock(server)
        listed = {s["modelId"] for s in client.list_foundation_models(byProvider="Meta")["modelSummaries"]}
        assert listed == ALL_MODELS - {"meta.llama2-13b-chat-v1", "meta.llama2-70b-v1"}
        code, _, _ = error_of(client.get_foundation_model, modelIdentifier="meta.llama2-70b-v1")
        assert code == "ValidationException"
    finally:
        stop_server(server)
