"""How S3 requests find their rows (no server): botocore's s3 model's operations, told apart by query string and
headers; S3 against Bedrock by the credential's service; virtual-hosted-style Host headers; S3 SigV4's canonical URI."""

from __future__ import annotations

import re

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from llamarock.auth import sigv4
from llamarock.codec.service_model import service_model
from llamarock.routes.operations import OperationTable

# Operations whose wire form is another's: the deprecated twin, and S3 Express's directory-bucket listing.
SAME_WIRE = {"GetBucketLifecycle", "GetBucketNotification", "PutBucketLifecycle", "PutBucketNotification",
             "ListDirectoryBuckets"}


def _request(name: str) -> tuple[str, bytes, bytes, list[tuple[bytes, bytes]], dict[str, str]]:
    operation = service_model("s3").operation_model(name)
    uri, _, literal = operation.http["requestUri"].partition("?")
    labels: dict[str, str] = {}

    def fill(found: re.Match[str]) -> str:
        label = found[1].rstrip("+")
        labels[label] = f"v-{label.lower()}"
        return labels[label]

    path = re.sub(r"\{([^}]+)\}", fill, uri)
    query = [part for part in literal.split("&") if part]
    headers = []
    shape = operation.input_shape
    for member in shape.required_members if shape is not None else ():
        serialization = shape.members[member].serialization
        if serialization.get("location") == "querystring":
            query.append(serialization["name"] + "=1")
        elif serialization.get("location") == "header":
            headers.append((serialization["name"].lower().encode(), b"1"))
    return operation.http["method"], path.encode(), "&".join(query).encode(), headers, labels


def test_every_s3_operation_resolves_to_its_own_row() -> None:
    table = OperationTable()
    names = [n for n in service_model("s3").operation_names if n not in SAME_WIRE]
    for name in names:
        method, path, query, headers, labels = _request(name)
        resolved = table.resolve(method, path, query, headers, "s3")
        assert resolved is not None, name
        row, found = resolved
        assert (row.service, row.name, found) == ("s3", name, labels)
        assert row.error_shape == "s3"
        assert (row.handler is not None) == (name in table.implemented("s3"))
        if row.handler is None:
            assert row.action == f"s3:{name}"


@pytest.mark.parametrize(("method", "path", "query", "headers", "expected"), [
    ("PUT", b"/b/k", b"", [], "PutObject"),
    ("PUT", b"/b/k", b"partNumber=3&uploadId=u", [], "UploadPart"),
    ("PUT", b"/b/k", b"partNumber=3&uploadId=u", [(b"x-amz-copy-source", b"s/k")], "UploadPartCopy"),
    ("PUT", b"/b/k", b"", [(b"X-Amz-Copy-Source", b"s/k")], "CopyObject"),
    ("GET", b"/b", b"", [], "ListObjects"),
    ("GET", b"/b", b"list-type=2&prefix=x", [], "ListObjectsV2"),
    ("GET", b"/b", b"list-type=3", [], "ListObjects"),  # only list-type=2 is V2
    ("GET", b"/b/folder/", b"", [], "GetObject"),
    ("GET", b"/b/k", b"uploadId=u", [], "ListParts"),
    ("POST", b"/b/k", b"uploads", [], "CreateMultipartUpload"),
    ("POST", b"/b/k", b"uploadId=u", [], "CompleteMultipartUpload"),
    ("DELETE", b"/b/k", b"uploadId=u", [], "AbortMultipartUpload"),
    ("DELETE", b"/b/k", b"", [], "DeleteObject"),
    ("POST", b"/b", b"delete", [], "DeleteObjects"),
    ("GET", b"/", b"", [], "ListBuckets"),
])
def test_operations_on_one_uri_are_told_apart(method: str, path: bytes, query: bytes,
                                              headers: list[tuple[bytes, bytes]], expected: str) -> None:
    resolved = OperationTable().resolve(method, path, query, headers, "s3")
    assert resolved is not None and resolved[0].name == expected


def test_s3_or_bedrock() -> None:
    table = OperationTable(s3_hosts=["localhost", "storage.example"])
    # Signed for s3: S3 even where Bedrock has a route.
    found = table.resolve("GET", b"/foundation-models", b"", [], "s3")
    assert found is not None and (found[0].service, found[0].name) == ("s3", "ListObjects")
    # Signed for s3 and no S3 operation: S3's MethodNotAllowed.
    found = table.resolve("POST", b"/b/k", b"", [], "s3")
    assert found is not None and (found[0].service, found[0].name, found[0].error_shape) == (
        "s3", "MethodNotAllowed", "s3")
    # Signed for bedrock, or a bearer token: Bedrock only.
    found = table.resolve("GET", b"/foundation-models", b"", [], "bedrock")
    assert found is not None and found[0].service == "bedrock"
    assert table.resolve("GET", b"/my-bucket/key", b"", [], "bedrock") is None
    assert table.resolve("GET", b"/my-bucket/key", b"", [], "") is None
    # No credential: Bedrock first, then S3 (never under /model/).
    found = table.resolve("GET", b"/my-bucket/key", b"", [], None)
    assert found is not None and (found[0].name, found[1]) == ("GetObject", {"Bucket": "my-bucket", "Key": "key"})
    assert table.resolve("GET", b"/model/x/invoke", b"", [], None) is None
    # Virtual-hosted style: the bucket is the Host's first label in front of a configured host name.
    for host in (b"docs.localhost:8080", b"docs.storage.example", b"DOCS.LOCALHOST."):
        found = table.resolve("GET", b"/a/b.txt", b"", [(b"host", host)], "s3")
        assert found is not None and found[1] == {"Bucket": "docs", "Key": "a/b.txt"}, host
    found = table.resolve("GET", b"/", b"list-type=2", [(b"host", b"docs.localhost:8080")], "s3")
    assert found is not None and (found[0].name, found[1]) == ("ListObjectsV2", {"Bucket": "docs"})
    for host in (b"127.0.0.1:8080", b"localhost:8080", b"docs.elsewhere.example"):
        found = table.resolve("GET", b"/a/b.txt", b"", [(b"host", host)], "s3")
        assert found is not None and found[1] == {"Bucket": "a", "Key": "b.txt"}, host


def test_credential_service_is_read_from_the_head() -> None:
    header = "AWS4-HMAC-SHA256 Credential=AKID/20240101/us-west-2/s3/aws4_request, SignedHeaders=host, Signature=x"
    assert sigv4.credential_service([(b"authorization", header.encode())], b"") == "s3"
    assert sigv4.credential_service([(b"authorization", b"Bearer token")], b"") == ""
    assert sigv4.credential_service([], b"X-Amz-Credential=AKID%2F20240101%2Fus-east-1%2Fbedrock%2Faws4_request") \
        == "bedrock"
    assert sigv4.credential_service([], b"prefix=x") is None


@pytest.mark.parametrize("path", ["/b/a%20b/c+d/%C3%A9", "/b/a//b/../c", "/b/~x/%2F"])
def test_s3_signatures_use_the_path_as_sent(path: str) -> None:
    """S3's canonical URI is not encoded a second time (Bedrock's is): botocore's S3 signer and the verifier agree
    on paths with spaces, '+', '%2F', dot segments and doubled slashes."""
    request = AWSRequest(method="GET", url="http://localhost:8080" + path,
                         headers={"x-amz-content-sha256": sigv4.UNSIGNED_PAYLOAD})
    S3SigV4Auth(Credentials("AKID", "secret"), "s3", "us-west-2").add_auth(request)
    headers = [(k.lower().encode(), v.encode() if isinstance(v, str) else v) for k, v in request.headers.items()]
    headers.append((b"host", b"localhost:8080"))
    signed = sigv4.parse_authorization(request.headers["Authorization"], headers)
    assert signed.service == "s3"
    assert sigv4.signature_matches(signed, "secret", method="GET", raw_path=path.encode(), query_string=b"",
                                   headers=headers, body=b"")
    assert not sigv4.signature_matches(signed, "other", method="GET", raw_path=path.encode(), query_string=b"",
                                       headers=headers, body=b"")
