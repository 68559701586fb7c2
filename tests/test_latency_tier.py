"""Latency-optimized inference: accepted for Llama 3.1 70B and 405B as on Bedrock, refused for the others."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

OPTIMIZED = "meta.llama3-1-70b-instruct-v1:0"
STANDARD_ONLY = "meta.llama3-1-8b-instruct-v1:0"
MESSAGES = [{"role": "user", "content": [{"text": "hello"}]}]


def test_invoke_model_echoes_the_optimized_tier(fake_runtime: object) -> None:
    response = fake_runtime.invoke_model(  # type: ignore[attr-defined]
        modelId=OPTIMIZED, body=json.dumps({"prompt": "hi", "max_gen_len": 5}), performanceConfigLatency="optimized"
    )
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["x-amzn-bedrock-performanceconfig-latency"] == "optimized"
    assert response["performanceConfigLatency"] == "optimized"


def test_converse_echoes_the_optimized_tier(fake_runtime: object) -> None:
    response = fake_runtime.converse(  # type: ignore[attr-defined]
        modelId=f"us.{OPTIMIZED}", messages=MESSAGES, performanceConfig={"latency": "optimized"}
    )
    assert response["performanceConfig"] == {"latency": "optimized"}


@pytest.mark.parametrize("operation", ["invoke", "converse"])
def test_models_without_the_tier_refuse_it(fake_runtime: object, operation: str) -> None:
    with pytest.raises(ClientError) as caught:
        if operation == "invoke":
            fake_runtime.invoke_model(  # type: ignore[attr-defined]
                modelId=STANDARD_ONLY, body=json.dumps({"prompt": "hi"}), performanceConfigLatency="optimized"
            )
        else:
            fake_runtime.converse(  # type: ignore[attr-defined]
                modelId=STANDARD_ONLY, messages=MESSAGES, performanceConfig={"latency": "optimized"}
            )
    error = caught.value.response
    assert error["Error"]["Code"] == "ValidationException"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "latency-optimized" in error["Error"]["Message"] and OPTIMIZED in error["Error"]["Message"]


def test_standard_tier_is_accepted_everywhere(fake_runtime: object) -> None:
    response = fake_runtime.converse(  # type: ignore[attr-defined]
        modelId=STANDARD_ONLY, messages=MESSAGES, performanceConfig={"latency": "standard"}
    )
    assert response["performanceConfig"] == {"latency": "standard"}
