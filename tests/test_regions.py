"""Regions and geofencing: the request's region is its SigV4 credential scope's; models are offered per region as
the catalog (or the config) says; cross-region inference profiles serve their geography; `--regions` restricts."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from llamarock.bedrock import catalog
from llamarock.bedrock.model_ids import parse_model_ref
from llamarock.bedrock.regions import ON_DEMAND_UNSUPPORTED, RegionMap, geography
from llamarock.context import ModelName
from llamarock.errors import ValidationException
from llamarock.services.deployments import DeploymentConfigError, DeploymentRegistry
from llamarock.services.inference import InferenceService
from llamarock.settings import load_settings
from tests.conftest import Server, start_server, stop_server

OREGON_ONLY = "meta.llama3-1-70b-instruct-v1:0"  # the spec: Llama 3.1 models in US West (Oregon)
SMALL = "meta.llama3-1-8b-instruct-v1:0"
GEOFENCED = "meta.llama3-2-1b-instruct-v1:0"  # the spec: Llama 3.2 and 3.3 Instruct are geofenced
INVALID = "The provided model identifier is invalid."
BODY = json.dumps({"prompt": "hello", "max_gen_len": 5})
MESSAGES = [{"role": "user", "content": [{"text": "hello"}]}]


def runtime(server: Server, region: str) -> Any:
    return server.client("bedrock-runtime", region)


def control(server: Server, region: str) -> Any:
    return server.client("bedrock", region)


def invoke(client: Any, model_id: str) -> dict[str, Any]:
    return json.loads(client.invoke_model(modelId=model_id, body=BODY)["body"].read())  # type: ignore[no-any-return]


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"], response["Error"]["Message"]


# --- the rules, on the catalog's data -----------------------------------------------------------------------------


def place(identifier: str, region: str, regions: RegionMap | None = None) -> str:
    ref = parse_model_ref(identifier)
    model = catalog.get(ref.model_id)
    assert model is not None
    return (regions or RegionMap()).inference_region(model, ref, region)


def refusal(identifier: str, region: str, regions: RegionMap | None = None) -> str:
    with pytest.raises(ValidationException) as info:
        place(identifier, region, regions)
    return info.value.message


def test_geographies() -> None:
    assert [geography(r) for r in ("us-east-1", "us-gov-west-1", "eu-west-3", "ap-south-1", "ca-central-1")] == [
        "us", "us", "eu", "apac", None
    ]


def test_base_ids_run_in_the_requests_region_where_offered_on_demand() -> None:
    assert place(OREGON_ONLY, "us-west-2") == "us-west-2"
    assert place(f"arn:aws:bedrock:us-west-2::foundation-model/{OREGON_ONLY}", "us-west-2") == "us-west-2"
    assert place("meta.llama3-8b-instruct-v1:0", "us-east-1") == "us-east-1"
    assert place(GEOFENCED, "us-west-2") == "us-west-2"
    # Offered in the region only through an inference profile: Bedrock's on-demand error names the way out.
    message = refusal(OREGON_ONLY, "us-east-1")
    assert message.startswith(ON_DEMAND_UNSUPPORTED.format(model_id=OREGON_ONLY))
    assert "isn\u2019t supported" in message and f"us.{OREGON_ONLY}" in message
    assert refusal(GEOFENCED, "eu-west-1").startswith(ON_DEMAND_UNSUPPORTED.format(model_id=GEOFENCED))
    assert refusal("meta.llama3-3-70b-instruct-v1:0", "us-east-2").startswith("Invocation of model ID")
    # Not offered at all: the identifier is invalid there.
    message = refusal(OREGON_ONLY, "eu-west-1")
    assert message.startswith(INVALID) and "on demand in us-west-2" in message
    assert refusal("meta.llama3-8b-instruct-v1:0", "eu-west-1").startswith(INVALID)
    # An ARN of another region names a resource this region does not have.
    message = refusal(f"arn:aws:bedrock:us-east-1::foundation-model/{OREGON_ONLY}", "us-west-2")
    assert message.startswith(INVALID) and "us-east-1" in message


def test_profiles_serve_their_geography_where_the_model_runs() -> None:
    assert place(f"us.{SMALL}", "us-east-1") == "us-west-2"
    assert place(f"us.{SMALL}", "us-west-2") == "us-west-2"
    assert place("us.meta.llama3-2-11b-instruct-v1:0", "us-east-1") == "us-east-1"
    assert place("us.meta.llama3-2-11b-instruct-v1:0", "us-gov-west-1") == "us-east-1"
    assert place(f"eu.{GEOFENCED}", "eu-west-3") == "eu-west-3"
    assert place(f"eu.{GEOFENCED}", "eu-north-1") == "eu-central-1"
    assert place(f"arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.{GEOFENCED}", "eu-west-1") == "eu-west-1"
    message = refusal(f"eu.{GEOFENCED}", "us-east-1")
    assert message.startswith(INVALID) and "only from eu-* regions" in message
    assert refusal(f"us.{SMALL}", "eu-west-1").startswith(INVALID)
    assert refusal(f"us.{SMALL}", "ap-southeast-2").startswith(INVALID)
    message = refusal(f"apac.{SMALL}", "ap-southeast-2")
    assert message.startswith(INVALID) and f"its inference profiles: us.{SMALL}" in message
    assert "inference profiles: none" in refusal("us.meta.llama3-8b-instruct-v1:0", "us-east-1")
    message = refusal(f"arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.{SMALL}", "us-west-2")
    assert message.startswith(INVALID) and "signed for us-west-2" in message


def test_overrides_replace_the_catalogs_regions() -> None:
    regions = RegionMap(model_regions={OREGON_ONLY: ["us-west-2", "eu-west-1"]})
    assert place(OREGON_ONLY, "eu-west-1", regions) == "eu-west-1"
    assert place(f"us.{OREGON_ONLY}", "us-east-1", regions) == "us-west-2"
    # The catalog has no eu. profile for Llama 3.1: new regions do not invent profiles.
    assert refusal(f"eu.{OREGON_ONLY}", "eu-west-1", regions).startswith(INVALID)
    profile_only = RegionMap(on_demand_regions={"meta.llama3-8b-instruct-v1:0": []})
    assert refusal("meta.llama3-8b-instruct-v1:0", "us-east-1", profile_only).startswith("Invocation of model ID")
    both = RegionMap(model_regions={SMALL: ["us-east-1", "us-west-2"]}, on_demand_regions={SMALL: ["us-east-1"]})
    assert place(SMALL, "us-east-1", both) == "us-east-1"
    assert refusal(SMALL, "us-west-2", both).startswith("Invocation of model ID")
    assert place(f"us.{SMALL}", "us-west-2", both) == "us-west-2"
    with pytest.raises(ValueError, match=r"meta\.llama9"):
        RegionMap(model_regions={"meta.llama9": ["us-west-2"]})


def test_resolve_records_the_inference_region(tmp_path: Path) -> None:
    service = InferenceService(DeploymentRegistry(load_settings(engine="fake", data_dir=tmp_path)),
                               load_settings(engine="fake", data_dir=tmp_path))
    assert service.resolve(ModelName.parse(f"us.{SMALL}", {}), "us-east-1").inference_region == "us-west-2"
    assert service.resolve(ModelName.parse(SMALL, {})).inference_region == "us-west-2"  # no region: the server's
    with pytest.raises(ValidationException):
        service.resolve(ModelName.parse(SMALL, {}), "us-east-1")
    settings = load_settings(engine="fake", data_dir=tmp_path, model_regions={"meta.nope": ["us-west-2"]})
    with pytest.raises(DeploymentConfigError, match=r"meta\.nope"):
        InferenceService(DeploymentRegistry(settings), settings)


# --- end to end: one server, clients signing for different regions --------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("regions"), "--engine", "fake")
    yield srv
    stop_server(srv)


def test_a_model_offered_only_in_oregon_is_refused_from_ireland_on_the_same_server(served: Server) -> None:
    ireland, oregon = runtime(served, "eu-west-1"), runtime(served, "us-west-2")
    for call, kwargs in (
        (ireland.invoke_model, {"modelId": OREGON_ONLY, "body": BODY}),
        (ireland.invoke_model_with_response_stream, {"modelId": OREGON_ONLY, "body": BODY}),
        (ireland.converse, {"modelId": OREGON_ONLY, "messages": MESSAGES}),
        (ireland.converse_stream, {"modelId": OREGON_ONLY, "messages": MESSAGES}),
        (ireland.count_tokens, {"modelId": OREGON_ONLY, "input": {"converse": {"messages": MESSAGES}}}),
    ):
        code, status, message = error_of(call, **kwargs)
        assert (code, status) == ("ValidationException", 400)
        assert message.startswith(INVALID) and "us-west-2" in message
    assert invoke(oregon, OREGON_ONLY)["generation"]
    assert oregon.converse(modelId=OREGON_ONLY, messages=MESSAGES)["output"]["message"]["content"][0]["text"]


def test_cross_region_profiles_from_their_geography(served: Server) -> None:
    virginia = runtime(served, "us-east-1")
    assert invoke(virginia, f"us.{SMALL}")["generation"]
    assert virginia.converse(modelId=f"us.{SMALL}", messages=MESSAGES)["stopReason"]
    code, status, message = error_of(virginia.invoke_model, modelId=SMALL, body=BODY)
    assert (code, status) == ("ValidationException", 400)
    assert message.startswith(ON_DEMAND_UNSUPPORTED.format(model_id=SMALL))
    code, _, message = error_of(virginia.invoke_model, modelId=f"eu.{GEOFENCED}", body=BODY)
    assert code == "ValidationException" and message.startswith(INVALID) and "eu-*" in message
    paris = runtime(served, "eu-west-3")
    assert invoke(paris, f"eu.{GEOFENCED}")["generation"]
    code, _, message = error_of(paris.invoke_model, modelId=GEOFENCED, body=BODY)
    assert code == "ValidationException" and message.startswith("Invocation of model ID")
    assert error_of(paris.invoke_model, modelId=f"us.{GEOFENCED}", body=BODY)[0] == "ValidationException"


def test_the_catalog_answers_per_region_on_the_same_server(served: Server) -> None:
    oregon = control(served, "us-west-2").get_foundation_model(modelIdentifier=OREGON_ONLY)["modelDetails"]
    assert oregon["inferenceTypesSupported"][0] == "ON_DEMAND"
    assert error_of(control(served, "eu-west-1").get_foundation_model, modelIdentifier=OREGON_ONLY)[0] == (
        "ValidationException"
    )


# --- `--regions` and `model_regions` ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    config = f'model_regions = {{"{OREGON_ONLY}" = ["us-west-2", "eu-west-1"]}}\n'
    srv = start_server(tmp_path_factory.mktemp("restricted"), "--engine", "fake", "--regions", "eu-west-1,us-west-2",
                       config=config)
    yield srv
    stop_server(srv)


def test_regions_restrict_what_the_server_answers_for(restricted: Server) -> None:
    virginia = runtime(restricted, "us-east-1")
    for call, kwargs in (
        (virginia.invoke_model, {"modelId": f"us.{SMALL}", "body": BODY}),
        (control(restricted, "us-east-1").list_foundation_models, {}),
    ):
        code, status, message = error_of(call, **kwargs)
        assert (code, status) == ("InvalidSignatureException", 403)
        assert message.startswith("Credential should be scoped to a valid region, not 'us-east-1'.")
        assert "eu-west-1, us-west-2" in message
    assert invoke(runtime(restricted, "us-west-2"), SMALL)["generation"]


def test_model_regions_override_the_catalog(restricted: Server) -> None:
    ireland = runtime(restricted, "eu-west-1")
    assert invoke(ireland, OREGON_ONLY)["generation"]
    details = control(restricted, "eu-west-1").get_foundation_model(modelIdentifier=OREGON_ONLY)["modelDetails"]
    assert details["inferenceTypesSupported"] == ["ON_DEMAND", "PROVISIONED"]
    # Only the overridden model moved: Llama 3.1 8B is still Oregon's.
    assert error_of(ireland.invoke_model, modelId=SMALL, body=BODY)[2].startswith(INVALID)


def test_the_default_region_is_the_first_served_one(restricted: Server) -> None:
    # Unsigned requests (and bearer tokens) carry no region: they get `region`, by default the first of `regions`.
    with urllib.request.urlopen(restricted.url + "/foundation-models?byProvider=Meta", timeout=10) as response:
        summaries = json.loads(response.read())["modelSummaries"]
    assert {s["modelArn"].split(":")[3] for s in summaries} == {"eu-west-1"}
    assert {s["modelId"] for s in summaries} == {OREGON_ONLY, GEOFENCED, "meta.llama3-2-3b-instruct-v1:0"}


def test_bad_region_settings_stop_serve_with_a_clear_message(tmp_path: Path) -> None:
    cases = [
        (["--regions", "us-west-2", "--region", "eu-west-1"], None, "must be one of regions"),
        (["--regions", "mars-1"], None, "regions"),
        ([], 'model_regions = {"meta.llama9" = ["us-west-2"]}\n', "meta.llama9"),
    ]
    for args, config, words in cases:
        command = [sys.executable, "-m", "llamarock", "serve", "--engine", "fake", "--port", "0",
                   "--data-dir", str(tmp_path / "data"), *args]
        if config is not None:
            (tmp_path / "bad.toml").write_text(config)
            command += ["--config", str(tmp_path / "bad.toml")]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "configuration error" in result.stderr and words in result.stderr
