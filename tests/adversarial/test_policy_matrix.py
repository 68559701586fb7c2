"""The SigV4 / policy matrix: every condition key × forged proxy headers × model identifier forms, against a live
`serve --auth enforce`. A Deny whose condition matches the real request must hold, and an Allow whose condition does
not match must not let the call through, whatever headers the caller forges and however it names the model; an
Allow whose condition matches does let it through (so the matrix can fail both ways)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from botocore.credentials import Credentials

from llamarock.services.signing import signed_headers
from llamarock.storage.db import Database
from llamarock.storage.keys import KeyStore
from tests.conftest import Server, start_server, stop_server

ACCOUNT = "000000000000"
MODEL = "meta.llama3-1-8b-instruct-v1:0"
IDENTIFIERS = [
    MODEL,
    f"arn:aws:bedrock:us-west-2::foundation-model/{MODEL}",
    f"us.{MODEL}",
    f"arn:aws:bedrock:us-west-2:{ACCOUNT}:inference-profile/us.{MODEL}",
]
FORGED: list[dict[str, str]] = [
    {},
    {"X-Forwarded-For": "10.1.2.3", "X-Forwarded-Proto": "https"},
    {"X-Real-IP": "10.1.2.3", "Forwarded": "for=10.1.2.3;proto=https"},
    {"X-Forwarded-For": "10.1.2.3, 127.0.0.1", "X-Forwarded-Host": "bedrock-runtime.us-west-2.amazonaws.com"},
]
# condition key -> (a condition the real request matches, one it cannot match from loopback over HTTP in us-west-2)
CONDITIONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "aws:SourceIp": ({"IpAddress": {"aws:SourceIp": "127.0.0.1/32"}},
                     {"IpAddress": {"aws:SourceIp": "10.1.2.3/32"}}),
    "aws:SecureTransport": ({"Bool": {"aws:SecureTransport": "false"}}, {"Bool": {"aws:SecureTransport": "true"}}),
    "aws:RequestedRegion": ({"StringEquals": {"aws:RequestedRegion": "us-west-2"}},
                            {"StringEquals": {"aws:RequestedRegion": "eu-west-1"}}),
    "aws:PrincipalArn": ({"ArnLike": {"aws:PrincipalArn": f"arn:aws:iam::{ACCOUNT}:user/matrix-*"}},
                         {"ArnLike": {"aws:PrincipalArn": "arn:aws:iam::999999999999:user/*"}}),
    "aws:username": ({"StringLike": {"aws:username": "matrix-*"}}, {"StringEquals": {"aws:username": "root"}}),
    "aws:PrincipalAccount": ({"StringEquals": {"aws:PrincipalAccount": ACCOUNT}},
                             {"StringEquals": {"aws:PrincipalAccount": "999999999999"}}),
    "aws:CurrentTime": ({"DateLessThan": {"aws:CurrentTime": "2100-01-01T00:00:00Z"}},
                        {"DateLessThan": {"aws:CurrentTime": "2001-01-01T00:00:00Z"}}),
    "aws:EpochTime": ({"NumericLessThan": {"aws:EpochTime": "4102444800"}},
                      {"NumericLessThan": {"aws:EpochTime": "978307200"}}),
}
ALLOW_ALL = {"Effect": "Allow", "Action": "bedrock:*", "Resource": "*"}


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, KeyStore]]:
    tmp = tmp_path_factory.mktemp("matrix")
    server = start_server(tmp, "--engine", "fake", "--auth", "enforce")
    database = Database.at(tmp / "data")
    yield server, KeyStore(database, tmp / "data")
    database.close()
    stop_server(server)


def _key(store: KeyStore, *statements: dict[str, Any]) -> Credentials:
    created = store.create_key(f"matrix-{uuid.uuid4().hex[:10]}",
                               policy={"Version": "2012-10-17", "Statement": list(statements)})
    return Credentials(created.access_key_id, created.secret_access_key)


def _status(server: Server, credentials: Credentials, identifier: str, forged: dict[str, str]) -> int:
    path = "/model/" + identifier.replace("/", "%2F").replace(":", "%3A") + "/invoke"
    body = json.dumps({"prompt": "hi", "max_gen_len": 2}).encode()
    headers = signed_headers("POST", server.url + path, {"content-type": "application/json", **forged}, body,
                             credentials, "us-west-2")
    response = httpx.post(server.url + path, content=body, headers=headers, timeout=30)
    return response.status_code


@pytest.mark.parametrize("key", sorted(CONDITIONS))
def test_conditions_hold_whatever_the_caller_forges(enforced: tuple[Server, KeyStore], key: str) -> None:
    server, store = enforced
    matching, unmatchable = CONDITIONS[key]
    denied = _key(store, ALLOW_ALL, {"Effect": "Deny", "Action": "bedrock:*", "Resource": "*", "Condition": matching})
    never_allowed = _key(store, {**ALLOW_ALL, "Condition": unmatchable})
    allowed = _key(store, {**ALLOW_ALL, "Condition": matching})
    bypasses = []
    for identifier in IDENTIFIERS:
        for forged in FORGED:
            for credentials, want in ((denied, 403), (never_allowed, 403), (allowed, 200)):
                got = _status(server, credentials, identifier, forged)
                if got != want:
                    bypasses.append((identifier, forged, want, got))
    assert bypasses == []


def test_resource_denies_hold_for_every_identifier_form(enforced: tuple[Server, KeyStore]) -> None:
    server, store = enforced
    for resource in (f"arn:aws:bedrock:*::foundation-model/{MODEL}", "arn:aws:bedrock:us-west-2::foundation-model/*"):
        credentials = _key(store, ALLOW_ALL, {"Effect": "Deny", "Action": "bedrock:*", "Resource": resource})
        for identifier in IDENTIFIERS:  # a profile needs its foundation model too, so the Deny reaches it
            for forged in FORGED:
                assert _status(server, credentials, identifier, forged) == 403, (resource, identifier, forged)
    profiles_denied = _key(store, ALLOW_ALL, {"Effect": "Deny", "Action": "bedrock:*",
                                              "Resource": f"arn:aws:bedrock:*:{ACCOUNT}:inference-profile/*"})
    assert [_status(server, profiles_denied, identifier, {}) for identifier in IDENTIFIERS] == [200, 200, 403, 403]


def test_a_signature_over_other_headers_or_body_is_refused(enforced: tuple[Server, KeyStore]) -> None:
    server, store = enforced
    credentials = _key(store, ALLOW_ALL)
    path = f"/model/{MODEL}/invoke"
    body = json.dumps({"prompt": "hi", "max_gen_len": 2}).encode()
    headers = signed_headers("POST", server.url + path, {"content-type": "application/json"}, body, credentials,
                             "us-west-2")
    assert httpx.post(server.url + path, content=body, headers=headers).status_code == 200
    tampered = httpx.post(server.url + path, content=body.replace(b"hi", b"yo"), headers=headers)
    assert tampered.status_code == 403 and tampered.headers["x-amzn-errortype"].startswith("InvalidSignatureException")
    other_path = httpx.post(server.url + f"/model/{MODEL}/converse", content=body, headers=headers)
    assert other_path.status_code == 403
