"""IAM-style policies: parsing (with clear rejections), evaluation (explicit Deny wins), conditions, quotas."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llamarock.auth.actions import model_resources
from llamarock.auth.policy import FULL_ACCESS, PolicyError, parse_policy
from llamarock.auth.quotas import TOO_MANY_REQUESTS, TOO_MANY_TOKENS, Quotas, request_estimate
from llamarock.context import ModelName
from llamarock.errors import ThrottlingException
from llamarock.routes.operations import OperationTable

FM = "arn:aws:bedrock:us-west-2::foundation-model/"
CTX = {"aws:sourceip": "10.1.2.3", "aws:currenttime": "2025-06-01T12:00:00Z"}


def policy(*statements: dict[str, Any]) -> Any:
    return parse_policy({"Version": "2012-10-17", "Statement": list(statements)})


def test_wildcards_on_resources_and_case_insensitive_actions() -> None:
    p = policy({"Effect": "Allow", "Action": "bedrock:invoke*", "Resource": FM + "meta.llama3-1-8b*"})
    assert p.evaluate("bedrock:InvokeModel", FM + "meta.llama3-1-8b-instruct-v1:0", CTX) == "Allow"
    assert p.evaluate("bedrock:InvokeModelWithResponseStream", FM + "meta.llama3-1-8b-instruct-v1:0", CTX) == "Allow"
    assert p.evaluate("bedrock:InvokeModel", FM + "meta.llama3-1-70b-instruct-v1:0", CTX) == "ImplicitDeny"
    assert p.evaluate("bedrock:CountTokens", FM + "meta.llama3-1-8b-instruct-v1:0", CTX) == "ImplicitDeny"
    q = policy({"Effect": "Allow", "Action": "bedrock:InvokeModel", "Resource": FM + "meta.llama3-?-8b*"})
    assert q.evaluate("bedrock:InvokeModel", FM + "meta.llama3-1-8b-instruct-v1:0", CTX) == "Allow"
    assert q.evaluate("bedrock:InvokeModel", FM + "meta.llama3-8b-instruct-v1:0", CTX) == "ImplicitDeny"


def test_explicit_deny_wins_and_not_elements() -> None:
    p = policy(
        {"Effect": "Allow", "Action": "bedrock:*", "Resource": "*"},
        {"Effect": "Deny", "Action": "bedrock:InvokeModel*", "Resource": FM + "*70b*"},
    )
    assert p.evaluate("bedrock:InvokeModel", FM + "meta.llama3-70b-instruct-v1:0", CTX) == "Deny"
    assert p.evaluate("bedrock:InvokeModel", FM + "meta.llama3-8b-instruct-v1:0", CTX) == "Allow"
    q = policy({"Effect": "Allow", "NotAction": "bedrock:CountTokens", "NotResource": FM + "*70b*"})
    assert q.evaluate("bedrock:InvokeModel", FM + "meta.llama3-8b-instruct-v1:0", CTX) == "Allow"
    assert q.evaluate("bedrock:CountTokens", FM + "meta.llama3-8b-instruct-v1:0", CTX) == "ImplicitDeny"
    assert q.evaluate("bedrock:InvokeModel", FM + "meta.llama3-70b-instruct-v1:0", CTX) == "ImplicitDeny"


@pytest.mark.parametrize(
    ("condition", "context", "allowed"),
    [
        ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, CTX, True),
        ({"IpAddress": {"aws:SourceIp": ["192.168.0.0/16", "10.1.2.3/32"]}}, CTX, True),
        ({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, CTX, False),
        ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {}, False),
        ({"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, {}, True),
        ({"DateLessThan": {"aws:CurrentTime": "2025-12-31T00:00:00Z"}}, CTX, True),
        ({"DateGreaterThan": {"aws:CurrentTime": "2025-12-31T00:00:00Z"}}, CTX, False),
        ({"DateGreaterThanIfExists": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}}, {}, True),
        ({"StringEquals": {"aws:RequestedRegion": "us-west-2"}}, {"aws:requestedregion": "us-west-2"}, True),
        ({"StringLike": {"aws:username": "team-*"}}, {"aws:username": "team-a"}, True),
        ({"StringNotLike": {"aws:username": "team-*"}}, {"aws:username": "team-a"}, False),
        ({"Bool": {"aws:SecureTransport": "true"}}, {"aws:securetransport": "false"}, False),
        ({"Bool": {"aws:SecureTransport": True}}, {"aws:securetransport": "true"}, True),
        ({"Null": {"aws:SourceIp": "true"}}, {}, True),
        ({"NumericLessThan": {"aws:EpochTime": 100}}, {"aws:epochtime": "99"}, True),
        ({"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}, "DateLessThan": {"aws:CurrentTime": "2020-01-01"}}, CTX, False),
    ],
)
def test_conditions(condition: dict[str, Any], context: dict[str, str], allowed: bool) -> None:
    p = policy({"Effect": "Allow", "Action": "bedrock:InvokeModel", "Resource": "*", "Condition": condition})
    assert (p.evaluate("bedrock:InvokeModel", FM + "m", context) == "Allow") is allowed


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ([], "JSON object"),
        ({"Statement": []}, "Statement must be"),
        ({"Version": "2020-01-01", "Statement": [{}]}, "Version must be"),
        ({"Statement": {"Effect": "Maybe", "Action": "*", "Resource": "*"}}, "Effect"),
        ({"Statement": {"Effect": "Allow", "Resource": "*"}}, "exactly one of Action or NotAction"),
        ({"Statement": {"Effect": "Allow", "Action": "*"}}, "exactly one of Resource or NotResource"),
        ({"Statement": {"Effect": "Allow", "Action": "InvokeModel", "Resource": "*"}}, "service:Action"),
        ({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "foundation-model/x"}}, "not an ARN"),
        ({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Principal": "*"}}, "no Principal"),
        ({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*", "Foo": 1}}, "unknown element"),
        ({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*",
                        "Condition": {"StringSoundsLike": {"k": "v"}}}}, "unsupported operator"),
        ({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*",
                        "Condition": {"IpAddress": {"aws:SourceIp": "not-an-ip"}}}}, "IpAddress"),
        ({"Statement": {"Effect": "Allow", "Action": "*", "Resource": "*",
                        "Condition": {"DateLessThan": {"aws:CurrentTime": "soon"}}}}, "DateLessThan"),
    ],
)
def test_malformed_policies_are_rejected_clearly(document: Any, message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        parse_policy(document)


def test_full_access_default() -> None:
    assert parse_policy(FULL_ACCESS).evaluate("bedrock:InvokeModel", FM + "x", {}) == "Allow"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
keys = st.sampled_from(["Effect", "Action", "NotAction", "Resource", "NotResource", "Condition", "Sid", "Principal"])
statement = st.dictionaries(keys, json_values | st.sampled_from(["Allow", "Deny", "*", "bedrock:*", "arn:aws:*"]))
documents = st.fixed_dictionaries(
    {"Version": st.sampled_from(["2012-10-17", "2008-10-17", "x"])},
    optional={"Statement": st.lists(statement, max_size=3) | statement | json_values},
) | json_values


@settings(max_examples=300, deadline=None)
@given(documents, st.text(max_size=30), st.text(max_size=60))
def test_fuzzed_policies_parse_or_fail_cleanly(document: Any, action: str, resource: str) -> None:
    try:
        compiled = parse_policy(document)
    except PolicyError:
        return
    assert compiled.evaluate(action, resource, {"aws:sourceip": action, "aws:currenttime": resource}) in (
        "Allow", "Deny", "ImplicitDeny"
    )


def test_resources_of_each_identifier_form() -> None:
    assert model_resources(ModelName.parse("meta.llama3-8b-instruct-v1:0", {}), "eu-west-1", "123456789012") == (
        ("arn:aws:bedrock:eu-west-1::foundation-model/meta.llama3-8b-instruct-v1:0",), "meta.llama3-8b-instruct-v1:0"
    )
    profile = ModelName.parse("us.meta.llama3-1-8b-instruct-v1:0", {})
    resources, model = model_resources(profile, "us-east-1", "123456789012")
    assert resources == (
        "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-1-8b-instruct-v1:0",
        "arn:aws:bedrock:us-east-1::foundation-model/meta.llama3-1-8b-instruct-v1:0",
    )
    assert model == "meta.llama3-1-8b-instruct-v1:0"
    arn = "arn:aws:bedrock:us-east-2::foundation-model/meta.llama3-8b-instruct-v1:0"
    assert model_resources(ModelName.parse(arn, {}), "us-west-2", "123456789012")[0] == (arn,)
    assert model_resources(ModelName.parse("mine", {"mine": "meta.llama3-8b-instruct-v1:0"}), "us-west-2", "1")[1] == (
        "meta.llama3-8b-instruct-v1:0"
    )
    table = OperationTable()
    resolved = table.resolve("POST", b"/model/meta.llama3-8b-instruct-v1%3A0/converse-stream")
    assert resolved is not None
    assert resolved[0].action == "bedrock:InvokeModelWithResponseStream"
    assert resolved[1] == {"modelId": "meta.llama3-8b-instruct-v1:0"}
    assert table.resolve("GET", b"/model/x/invoke") is None


def test_token_buckets() -> None:
    now = [0.0]
    quotas = Quotas(clock=lambda: now[0])
    for _ in range(5):
        quotas.admit("alice", "m", 5, None, 0)
    with pytest.raises(ThrottlingException, match=TOO_MANY_REQUESTS):
        quotas.admit("alice", "m", 5, None, 0)
    quotas.admit("alice", "other-model", 5, None, 0)
    quotas.admit("bob", "m", 5, None, 0)
    now[0] = 12.0
    quotas.admit("alice", "m", 5, None, 0)
    first = quotas.admit("carol", "m", None, 1000, 900)
    with pytest.raises(ThrottlingException, match=TOO_MANY_TOKENS):
        quotas.admit("carol", "m", None, 1000, 200)
    first.settle(100)  # it used 100 of the 900 it reserved
    quotas.admit("carol", "m", None, 1000, 200)
    big = quotas.admit("dave", "m", None, 100, 5000)  # more than a minute's worth: admitted when the bucket is full
    big.settle(5000)
    with pytest.raises(ThrottlingException):
        quotas.admit("dave", "m", None, 100, 1)


def test_estimate_tokens() -> None:
    assert request_estimate(b'{"prompt": "abcdefgh", "max_gen_len": 10}') == 12
    assert request_estimate(b'{"prompt": "abcd"}') == 513
    converse = b'{"messages": [{"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 7}}'
    assert 7 < request_estimate(converse) < 30
    assert request_estimate(b"not json") == 2 + 512
