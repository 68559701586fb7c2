"""SigV4 verification against requests signed by botocore itself: headers, presigned queries, payload hashes, skew."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from llamarock.auth import sigv4
from llamarock.errors import IncompleteSignatureException, InvalidSignatureException

CREDS = Credentials("AKIATESTKEY", "s3cr3t/with+chars")
BODY = b'{"prompt": "hi"}'
URL = "http://127.0.0.1:8080/model/meta.llama3-8b-instruct-v1%3A0/invoke"


def signed(url: str = URL, body: bytes = BODY, headers: dict[str, str] | None = None,
           signer: Any = None) -> AWSRequest:
    request = AWSRequest(method="POST", url=url, data=body, headers=headers or {"Content-Type": "application/json"})
    (signer or SigV4Auth(CREDS, "bedrock", "us-west-2")).add_auth(request)
    return request


def check(request: AWSRequest, secret: str = CREDS.secret_key, body: bytes | None = None) -> bool:
    parts = urlsplit(request.url)
    headers = [(k.lower().encode(), v.encode() if isinstance(v, str) else v) for k, v in request.headers.items()]
    headers.append((b"host", parts.netloc.encode()))
    if "Authorization" in request.headers:
        parsed = sigv4.parse_authorization(request.headers["Authorization"], headers)
    else:
        parsed = sigv4.parse_presigned(dict(sigv4.query_pairs(parts.query.encode())))
    return sigv4.signature_matches(
        parsed, secret, method=request.method, raw_path=parts.path.encode(), query_string=parts.query.encode(),
        headers=headers, body=request.body if body is None else body,
    )


def test_botocore_signature_verifies_and_wrong_secret_or_body_does_not() -> None:
    request = signed()
    assert check(request)
    assert not check(request, secret="wrong")
    assert not check(request, body=b'{"prompt": "ho"}')


@pytest.mark.parametrize("path", [
    "/model/meta.llama3-8b-instruct-v1%3A0/invoke",
    "/model/meta.llama3-8b-instruct-v1:0/converse",
    "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.meta.llama3-1-8b-instruct-v1"
    "%3A0/invoke",
    "/model/with%20space/invoke",
])
def test_paths_are_verified_as_sent(path: str) -> None:
    assert check(signed(url="http://127.0.0.1:8080" + path))


def test_query_strings_and_unsigned_payload() -> None:
    assert check(signed(url=URL + "?b=2&a=1&a=0&x=%2F%20y~"))
    request = signed(headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    assert check(request)
    assert check(request, body=b"anything at all")  # the client chose not to sign the body


def test_declared_payload_hash_must_match_body() -> None:
    request = signed(headers={"X-Amz-Content-SHA256": "0" * 64})
    with pytest.raises(InvalidSignatureException, match="x-amz-content-sha256"):
        check(request)


class _PresignBody(SigV4QueryAuth):
    """botocore's query signer, keeping the body in the body (it would move form data into the query)."""

    def _modify_request_before_signing(self, request: AWSRequest) -> None:
        data, request.data = request.data, b""
        super()._modify_request_before_signing(request)
        request.data = data


def test_presigned_query_string() -> None:
    request = signed(signer=_PresignBody(CREDS, "bedrock", "us-west-2", expires=60))
    assert "X-Amz-Signature=" in request.url and "Authorization" not in request.headers
    assert check(request)
    assert not check(request, secret="nope")
    assert not check(request, body=b"{}")


def _parsed(amz_date: str, presigned_expires: int | None = None) -> sigv4.SignedRequest:
    return sigv4.SignedRequest("AKIA", amz_date[:8], "us-west-2", "bedrock", amz_date, ("host",), "x",
                               presigned_expires is not None, presigned_expires, None)


def test_clock_skew_messages_are_aws_words() -> None:
    now = datetime(2025, 3, 25, 14, 52, 51, tzinfo=UTC)
    sigv4.check_time(_parsed("20250325T145000Z"), now, 300)
    with pytest.raises(InvalidSignatureException) as info:
        sigv4.check_time(_parsed("20250325T143453Z"), now, 300)
    assert info.value.message == (
        "Signature expired: 20250325T143453Z is now earlier than 20250325T144751Z (20250325T145251Z - 5 min.)"
    )
    with pytest.raises(InvalidSignatureException, match="Signature not yet current: 20250325T150000Z is still"):
        sigv4.check_time(_parsed("20250325T150000Z"), now, 300)
    sigv4.check_time(_parsed("20250325T144000Z", 3600), now, 300)
    with pytest.raises(InvalidSignatureException, match="Signature expired"):
        sigv4.check_time(_parsed("20250325T144000Z", 60), now, 300)
    assert now - timedelta(minutes=5) < now


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        ("Basic abc", IncompleteSignatureException, "Unsupported authorization type"),
        ("AWS4-HMAC-SHA256 Credential=a/20250101/us-west-2/bedrock/aws4_request", IncompleteSignatureException,
         "requires 'SignedHeaders' parameter. Authorization header requires 'Signature'"),
        ("AWS4-HMAC-SHA256 Credential=a/b, SignedHeaders=host, Signature=x", IncompleteSignatureException,
         "5 slash-delimited"),
        ("AWS4-HMAC-SHA256 Credential=a/20250101/us-west-2/sts/aws4_request, SignedHeaders=host, Signature=x",
         InvalidSignatureException, "scoped to correct service: 'bedrock'"),
        ("AWS4-HMAC-SHA256 Credential=a/20250101/us-west-2/bedrock/aws4_request, SignedHeaders=x-amz-date, "
         "Signature=x", IncompleteSignatureException, "'Host'"),
        ("AWS4-HMAC-SHA256 Credential=a/20240101/us-west-2/bedrock/aws4_request, SignedHeaders=host, Signature=x",
         InvalidSignatureException, "Date in Credential scope does not match"),
    ],
)
def test_malformed_authorization(value: str, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        sigv4.parse_authorization(value, [(b"x-amz-date", b"20250101T000000Z")])


def test_date_header_instead_of_x_amz_date() -> None:
    value = "AWS4-HMAC-SHA256 Credential=a/20250101/us-west-2/bedrock/aws4_request, SignedHeaders=host, Signature=x"
    parsed = sigv4.parse_authorization(value, [(b"date", b"Wed, 01 Jan 2025 10:00:00 GMT")])
    assert parsed.timestamp == "20250101T100000Z"
    with pytest.raises(IncompleteSignatureException, match="'X-Amz-Date' or a 'Date' header"):
        sigv4.parse_authorization(value, [])
