"""The S3 endpoint of the local blob store (docs/s3.md), driven by boto3's ``s3`` client and the AWS CLI against
`llamarock serve`: buckets, objects, ranges and conditions, listings and their pages, copies, DeleteObjects,
multipart uploads (boto3's upload_file above 8 MB), checksums and digests, odd keys, path- and virtual-hosted-style
addressing, S3's XML errors, restarts, the endpoint off under an external blob store."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import subprocess
import sys
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import boto3
import httpx
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from llamarock.storage.blobs import LocalBlobStore
from tests.conftest import DUMMY_CREDENTIALS, Server, start_server, stop_server

MB = 1024 * 1024
NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def unique(prefix: str = "bucket") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def error_of(call: Any, **kwargs: Any) -> tuple[str, int, str]:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    response = info.value.response
    return (response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"],
            response["Error"].get("Message", ""))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("s3"), "--engine", "fake")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def s3(srv: Server) -> Any:
    return srv.client("s3")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = unique()
    s3.create_bucket(Bucket=name)
    return name


def blobs(srv: Server) -> Path:
    return srv.log_path.parent / "data" / "blobs"


def xml_error(body: bytes) -> dict[str, str]:
    root = ElementTree.fromstring(body)
    assert root.tag == "Error"
    return {child.tag: child.text or "" for child in root}


# ---------------------------------------------------------------------------------------------------- buckets


def test_bucket_lifecycle_and_its_errors(s3: Any) -> None:
    name = unique()
    assert s3.create_bucket(Bucket=name)["Location"] == f"/{name}"
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    s3.head_bucket(Bucket=name)
    assert error_of(s3.create_bucket, Bucket=name)[:2] == ("BucketAlreadyOwnedByYou", 409)
    code, status, message = error_of(s3.create_bucket, Bucket="Bad_Name")
    assert (code, status) == ("InvalidBucketName", 400) and "lowercase" in message
    s3.put_object(Bucket=name, Key="k", Body=b"x")
    assert error_of(s3.delete_bucket, Bucket=name)[:2] == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    assert error_of(s3.head_bucket, Bucket=name)[:2] == ("404", 404)  # HEAD: no body, so no code but the status
    assert error_of(s3.delete_bucket, Bucket=name)[:2] == ("NoSuchBucket", 404)
    assert error_of(s3.put_object, Bucket=name, Key="k", Body=b"x")[:2] == ("NoSuchBucket", 404)
    region = s3.get_bucket_location(Bucket=unique_bucket(s3))["LocationConstraint"]
    assert region == "us-west-2"


def unique_bucket(s3: Any) -> str:
    name = unique()
    s3.create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    return name


# ---------------------------------------------------------------------------------------------------- objects


def test_put_get_head_keep_etag_type_and_metadata(s3: Any, bucket: str, srv: Server) -> None:
    data = b"hello, knowledge base"
    put = s3.put_object(Bucket=bucket, Key="docs/a.txt", Body=data, ContentType="text/markdown",
                        Metadata={"team": "search", "Year": "2024"}, CacheControl="no-cache")
    assert put["ResponseMetadata"]["RequestId"]  # from x-amz-request-id, as on S3
    assert put["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    got = s3.get_object(Bucket=bucket, Key="docs/a.txt")
    assert got["Body"].read() == data
    assert got["ContentType"] == "text/markdown" and got["ContentLength"] == len(data)
    assert got["Metadata"] == {"team": "search", "year": "2024"} and got["CacheControl"] == "no-cache"
    assert got["ETag"] == put["ETag"]
    head = s3.head_object(Bucket=bucket, Key="docs/a.txt")
    assert head["ContentLength"] == len(data) and head["ETag"] == put["ETag"]
    assert head["LastModified"] == got["LastModified"]
    # The bytes are the blob store's file, which every other reader of the blob folder sees.
    assert (blobs(srv) / bucket / "docs" / "a.txt").read_bytes() == data
    assert error_of(s3.get_object, Bucket=bucket, Key="docs/missing")[:2] == ("NoSuchKey", 404)
    assert error_of(s3.head_object, Bucket=bucket, Key="docs/missing")[:2] == ("404", 404)
    s3.delete_object(Bucket=bucket, Key="docs/a.txt")
    s3.delete_object(Bucket=bucket, Key="docs/a.txt")  # deleting what is not there succeeds, as on S3
    assert error_of(s3.get_object, Bucket=bucket, Key="docs/a.txt")[:2] == ("NoSuchKey", 404)
    assert not (blobs(srv) / bucket / "docs").exists()  # no empty folders left behind


def test_ranges_and_conditions(s3: Any, bucket: str) -> None:
    data = bytes(range(256)) * 4
    etag = s3.put_object(Bucket=bucket, Key="r", Body=data)["ETag"]
    part = s3.get_object(Bucket=bucket, Key="r", Range="bytes=10-19")
    assert part["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert part["Body"].read() == data[10:20] and part["ContentRange"] == f"bytes 10-19/{len(data)}"
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=-5")["Body"].read() == data[-5:]
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=1000-")["Body"].read() == data[1000:]
    assert s3.get_object(Bucket=bucket, Key="r", Range="bytes=1020-5000")["Body"].read() == data[1020:]
    assert error_of(s3.get_object, Bucket=bucket, Key="r", Range="bytes=5000-")[:2] == ("InvalidRange", 416)
    assert error_of(s3.get_object, Bucket=bucket, Key="r", IfNoneMatch=etag)[:2] == ("304", 304)
    assert s3.get_object(Bucket=bucket, Key="r", IfNoneMatch='"other"')["Body"].read() == data
    assert error_of(s3.get_object, Bucket=bucket, Key="r", IfMatch='"other"')[:2] == ("PreconditionFailed", 412)
    modified = s3.head_object(Bucket=bucket, Key="r")["LastModified"]
    assert error_of(s3.head_object, Bucket=bucket, Key="r", IfModifiedSince=modified)[:2] == ("304", 304)


@pytest.mark.parametrize("key", [
    "folder/", "a//b", "a/../b", "/absolute", "../../escape", "./dot", "a", "a/b", "spaced key +plus%25.txt",
    "naïve/日本語.md", "x" * 300,
])
def test_odd_keys_round_trip_and_stay_in_their_bucket(s3: Any, srv: Server, key: str) -> None:
    bucket = unique()
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="a", Body=b"file a")  # 'a' and 'a/b' both exist, as S3 allows
    s3.put_object(Bucket=bucket, Key="a/b", Body=b"file a/b")
    s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == key.encode()
    keys = [item["Key"] for item in s3.list_objects_v2(Bucket=bucket)["Contents"]]
    assert sorted({key, "a", "a/b"}, key=lambda k: k.encode()) == keys
    assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == (key.encode() if key == "a" else b"file a")
    # Nothing was written outside the bucket's folder and llamarock's hidden folder.
    for path in blobs(srv).rglob("*"):
        top = path.relative_to(blobs(srv)).parts[0]
        assert top == ".s3" or top.startswith(("bucket-", "cli-")), path
    s3.delete_object(Bucket=bucket, Key=key)
    assert error_of(s3.get_object, Bucket=bucket, Key=key)[:2] == ("NoSuchKey", 404)


def test_a_symbolic_link_in_a_bucket_folder_leads_nowhere(s3: Any, bucket: str, srv: Server, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    (blobs(srv) / bucket / "link").symlink_to(outside)
    s3.put_object(Bucket=bucket, Key="link/new.txt", Body=b"kept inside")
    assert not (outside / "new.txt").exists()
    assert s3.get_object(Bucket=bucket, Key="link/new.txt")["Body"].read() == b"kept inside"
    assert error_of(s3.get_object, Bucket=bucket, Key="link/secret.txt")[:2] == ("NoSuchKey", 404)
    for prefix in ("", "link/"):
        listed = [c["Key"] for c in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
        assert listed == ["link/new.txt"], prefix
    s3.delete_object(Bucket=bucket, Key="link/secret.txt")
    assert (outside / "secret.txt").exists()


def test_key_limits(s3: Any, bucket: str) -> None:
    assert error_of(s3.put_object, Bucket=bucket, Key="k" * 1025, Body=b"x")[:2] == ("KeyTooLongError", 400)


# ---------------------------------------------------------------------------------------------------- listings


def test_list_objects_v2_prefix_delimiter_and_pages(s3: Any, bucket: str) -> None:
    keys = ["a.txt", "docs/2024/x.pdf", "docs/2024/y.pdf", "docs/2025/z.pdf", "docs/readme.md", "img/p.png",
            "img/q.png", "zeta"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    everything = s3.list_objects_v2(Bucket=bucket)
    assert [c["Key"] for c in everything["Contents"]] == keys and everything["KeyCount"] == len(keys)
    assert not everything["IsTruncated"]
    top = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [c["Key"] for c in top["Contents"]] == ["a.txt", "zeta"]
    assert [p["Prefix"] for p in top["CommonPrefixes"]] == ["docs/", "img/"]
    docs = s3.list_objects_v2(Bucket=bucket, Prefix="docs/", Delimiter="/")
    assert [c["Key"] for c in docs["Contents"]] == ["docs/readme.md"]
    assert [p["Prefix"] for p in docs["CommonPrefixes"]] == ["docs/2024/", "docs/2025/"]
    assert [c["Key"] for c in s3.list_objects_v2(Bucket=bucket, Prefix="docs/20")["Contents"]] == keys[1:4]
    assert [c["Key"] for c in s3.list_objects_v2(Bucket=bucket, StartAfter="docs/readme.md")["Contents"]] == keys[5:]
    page = s3.list_objects_v2(Bucket=bucket, MaxKeys=3)
    assert page["IsTruncated"] and len(page["Contents"]) == 3 and page["NextContinuationToken"]
    # Pages of entries (keys and common prefixes together), as the paginator walks them.
    seen_keys, seen_prefixes = [], []
    for result in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Delimiter="/",
                                                               PaginationConfig={"PageSize": 1}):
        seen_keys += [c["Key"] for c in result.get("Contents", [])]
        seen_prefixes += [p["Prefix"] for p in result.get("CommonPrefixes", [])]
        assert result["KeyCount"] == 1
    assert (seen_keys, seen_prefixes) == (["a.txt", "zeta"], ["docs/", "img/"])
    flat = [c["Key"] for r in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 2}) for c in r["Contents"]]
    assert flat == keys
    v1 = [c["Key"] for r in s3.get_paginator("list_objects").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 3}) for c in r["Contents"]]
    assert v1 == keys
    assert [c["Key"] for c in s3.list_objects(Bucket=bucket, Marker="img/q.png")["Contents"]] == ["zeta"]
    assert error_of(s3.list_objects_v2, Bucket=bucket, ContinuationToken="garbage!")[:2] == ("InvalidArgument", 400)
    assert error_of(s3.list_objects_v2, Bucket=unique())[:2] == ("NoSuchBucket", 404)


# ---------------------------------------------------------------------------------------------------- copy, delete


def test_copy_object_and_delete_objects(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="src", Body=b"payload", ContentType="text/plain", Metadata={"m": "1"})
    copied = s3.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert copied["CopyObjectResult"]["ETag"] == f'"{hashlib.md5(b"payload").hexdigest()}"'
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert head["Metadata"] == {"m": "1"} and head["ContentType"] == "text/plain"
    s3.copy_object(Bucket=bucket, Key="dst", CopySource=f"{bucket}/src", MetadataDirective="REPLACE",
                   Metadata={"n": "2"}, ContentType="application/json")
    head = s3.head_object(Bucket=bucket, Key="dst")
    assert head["Metadata"] == {"n": "2"} and head["ContentType"] == "application/json"
    assert error_of(s3.copy_object, Bucket=bucket, Key="src", CopySource=f"{bucket}/src")[:2] == (
        "InvalidRequest", 400)
    assert error_of(s3.copy_object, Bucket=bucket, Key="x", CopySource=f"{bucket}/nope")[:2] == ("NoSuchKey", 404)
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "src"}, {"Key": "dst"}, {"Key": "never"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == ["dst", "never", "src"]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    quiet = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "x"}], "Quiet": True})
    assert "Deleted" not in quiet and "Errors" not in quiet


# ---------------------------------------------------------------------------------------------------- multipart


def multipart_etag(data: bytes, part_size: int) -> str:
    digests = [hashlib.md5(data[i:i + part_size]).digest() for i in range(0, len(data), part_size)]
    return f'"{hashlib.md5(b"".join(digests)).hexdigest()}-{len(digests)}"'


def test_upload_file_above_8_mb_is_multipart_and_downloads_whole(s3: Any, bucket: str, tmp_path: Path) -> None:
    data = os.urandom(12 * MB + 12345)
    source, target = tmp_path / "big.bin", tmp_path / "back.bin"
    source.write_bytes(data)
    config = TransferConfig(multipart_threshold=8 * MB, multipart_chunksize=8 * MB)
    s3.upload_file(str(source), bucket, "big/file.bin", Config=config, ExtraArgs={"Metadata": {"kind": "big"}})
    head = s3.head_object(Bucket=bucket, Key="big/file.bin")
    assert head["ETag"] == multipart_etag(data, 8 * MB) and head["ContentLength"] == len(data)
    assert head["Metadata"] == {"kind": "big"}
    s3.download_file(bucket, "big/file.bin", str(target), Config=config)
    assert target.read_bytes() == data
    ranged = s3.get_object(Bucket=bucket, Key="big/file.bin", Range=f"bytes={8 * MB - 3}-{8 * MB + 2}")
    assert ranged["Body"].read() == data[8 * MB - 3:8 * MB + 3]


def test_multipart_errors(s3: Any, bucket: str) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key="m")["UploadId"]
    small = [s3.upload_part(Bucket=bucket, Key="m", UploadId=upload, PartNumber=n, Body=b"x" * 10)["ETag"]
             for n in (1, 2)]
    listed = s3.list_parts(Bucket=bucket, Key="m", UploadId=upload)["Parts"]
    assert [(p["PartNumber"], p["ETag"], p["Size"]) for p in listed] == [(1, small[0], 10), (2, small[1], 10)]
    parts = [{"PartNumber": n, "ETag": e} for n, e in zip((1, 2), small, strict=True)]
    assert error_of(s3.complete_multipart_upload, Bucket=bucket, Key="m", UploadId=upload,
                    MultipartUpload={"Parts": parts})[:2] == ("EntityTooSmall", 400)
    assert error_of(s3.complete_multipart_upload, Bucket=bucket, Key="m", UploadId=upload,
                    MultipartUpload={"Parts": parts[::-1]})[:2] == ("InvalidPartOrder", 400)
    assert error_of(s3.complete_multipart_upload, Bucket=bucket, Key="m", UploadId=upload,
                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": '"00"'}]})[:2] == ("InvalidPart", 400)
    assert error_of(s3.upload_part, Bucket=bucket, Key="m", UploadId=upload, PartNumber=10001,
                    Body=b"x")[:2] == ("InvalidArgument", 400)
    # One small part is a whole object (the last part may be small).
    done = s3.complete_multipart_upload(Bucket=bucket, Key="m", UploadId=upload,
                                       MultipartUpload={"Parts": parts[:1]})
    assert done["ETag"] == multipart_etag(b"x" * 10, 10)
    assert s3.get_object(Bucket=bucket, Key="m")["Body"].read() == b"x" * 10
    assert error_of(s3.list_parts, Bucket=bucket, Key="m", UploadId=upload)[:2] == ("NoSuchUpload", 404)
    other = s3.create_multipart_upload(Bucket=bucket, Key="n")["UploadId"]
    s3.abort_multipart_upload(Bucket=bucket, Key="n", UploadId=other)
    assert error_of(s3.abort_multipart_upload, Bucket=bucket, Key="n", UploadId=other)[:2] == ("NoSuchUpload", 404)
    assert error_of(s3.upload_part, Bucket=bucket, Key="n", UploadId="../../etc", PartNumber=1,
                    Body=b"x")[:2] == ("NoSuchUpload", 404)


# ---------------------------------------------------------------------------------------------------- digests


def test_checksums_and_digests_are_verified(s3: Any, bucket: str, srv: Server) -> None:
    put = s3.put_object(Bucket=bucket, Key="c", Body=b"checked", ChecksumAlgorithm="SHA256")
    expected = base64.b64encode(hashlib.sha256(b"checked").digest()).decode()
    assert put["ChecksumSHA256"] == expected
    assert s3.get_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")["ChecksumSHA256"] == expected
    for algorithm in ("CRC32C", "CRC64NVME", "SHA1", "CRC32"):
        checksum = _checksum(algorithm, b"checked")
        s3.put_object(Bucket=bucket, Key="c", Body=b"checked", **{f"Checksum{algorithm}": checksum})
        assert s3.head_object(Bucket=bucket, Key="c", ChecksumMode="ENABLED")[f"Checksum{algorithm}"] == checksum
        assert error_of(s3.put_object, Bucket=bucket, Key="c", Body=b"tampered",
                        **{f"Checksum{algorithm}": checksum})[:2] == ("BadDigest", 400)
    wrong_md5 = base64.b64encode(hashlib.md5(b"other").digest()).decode()
    assert error_of(s3.put_object, Bucket=bucket, Key="c", Body=b"checked", ContentMD5=wrong_md5)[:2] == (
        "BadDigest", 400)
    # A body that is not what x-amz-content-sha256 says, signed as boto3 signs over plain HTTP.
    status, body = signed_put(srv, f"/{bucket}/c", b"actual", payload_hash=hashlib.sha256(b"claimed").hexdigest())
    assert status == 400 and xml_error(body)["Code"] == "XAmzContentSHA256Mismatch"
    assert s3.get_object(Bucket=bucket, Key="c")["Body"].read() == b"checked"  # nothing half-written


def _checksum(algorithm: str, data: bytes) -> str:
    from llamarock.codec.aws_chunked import Checksum

    if algorithm == "CRC32":  # zlib's, independently of the server's code
        return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    if algorithm == "SHA1":
        return base64.b64encode(hashlib.sha1(data).digest()).decode()
    checksum = Checksum(algorithm.lower())
    checksum.update(data)
    return checksum.value()


def signed_put(srv: Server, path: str, body: bytes, *, payload_hash: str, headers: dict[str, str] | None = None,
               host: str | None = None, secret: str = DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
               key_id: str = DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"]) -> tuple[int, bytes]:
    """A PUT signed with botocore's S3 signer for ``payload_hash`` (whatever the body is), sent with httpx."""
    netloc = host or srv.url.split("://", 1)[1]

    class Signer(S3SigV4Auth):  # type: ignore[misc]
        def payload(self, request: Any) -> str:
            return payload_hash

    request = AWSRequest(method="PUT", url=f"http://{netloc}{path}", data=body,
                         headers={"x-amz-content-sha256": payload_hash, "Host": netloc, **(headers or {})})
    Signer(Credentials(key_id, secret), "s3", "us-west-2").add_auth(request)
    sent = dict(request.headers.items())
    response = httpx.put(srv.url + path, content=body, headers=sent, verify=False)
    return response.status_code, response.content


# ---------------------------------------------------------------------------------------------------- addressing


def test_virtual_hosted_style_addressing(srv: Server, s3: Any, bucket: str) -> None:
    port = srv.url.rsplit(":", 1)[1]
    host = f"{bucket}.localhost:{port}"
    unsigned = httpx.put(srv.url + "/notes/v.txt", content=b"virtual", headers={"Host": host})
    assert unsigned.status_code == 200
    assert s3.get_object(Bucket=bucket, Key="notes/v.txt")["Body"].read() == b"virtual"
    status, _ = signed_put(srv, "/notes/signed.txt", b"signed", payload_hash=hashlib.sha256(b"signed").hexdigest(),
                           host=host)
    assert status == 200
    got = httpx.get(srv.url + "/notes/signed.txt", headers={"Host": host})
    assert got.status_code == 200 and got.content == b"signed"
    listing = ElementTree.fromstring(httpx.get(srv.url + "/?list-type=2", headers={"Host": host}).content)
    assert [k.text for k in listing.iter(f"{NS}Key")] == ["notes/signed.txt", "notes/v.txt"]
    # An IP address is never a virtual host: path-style it stays.
    assert httpx.get(srv.url + f"/{bucket}/notes/v.txt").content == b"virtual"


def test_unsigned_requests_that_match_no_bedrock_route_are_s3_with_xml_errors(srv: Server, bucket: str) -> None:
    missing = httpx.get(srv.url + "/no-such-bucket-here/key")
    assert missing.status_code == 404 and missing.headers["content-type"] == "application/xml"
    error = xml_error(missing.content)
    assert error["Code"] == "NoSuchBucket" and error["BucketName"] == "no-such-bucket-here"
    assert error["RequestId"] == missing.headers["x-amz-request-id"] == missing.headers["x-amzn-requestid"]
    head = httpx.head(srv.url + "/no-such-bucket-here/key")
    assert head.status_code == 404 and head.content == b""
    unimplemented = httpx.get(srv.url + f"/{bucket}?acl")
    assert unimplemented.status_code == 501 and xml_error(unimplemented.content)["Code"] == "NotImplemented"
    assert "GetBucketAcl" in xml_error(unimplemented.content)["Message"]
    # Bedrock's own routes are unchanged, signed or not.
    assert httpx.get(srv.url + "/foundation-models").status_code == 200
    assert srv.client("bedrock").list_foundation_models()["modelSummaries"]
    invoke = httpx.get(srv.url + "/model/x/invoke")
    assert invoke.status_code == 404 and invoke.json()["message"].startswith("No operation matches")


def test_method_not_allowed_and_entity_too_large(srv: Server, bucket: str) -> None:
    status, body = signed_request(srv, "POST", f"/{bucket}/key", b"")
    assert status == 405 and xml_error(body)["Code"] == "MethodNotAllowed"
    # A PutObject whose declared length is past S3's 5 GiB is refused before anything is read.
    host, port = srv.url.split("://", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"PUT /{bucket}/huge HTTP/1.1\r\nHost: {host}:{port}\r\n"
                     f"Content-Length: {6 * 1024**3}\r\n\r\n".encode() + b"x" * 1000)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400") and xml_error(body)["Code"] == "EntityTooLarge"


def signed_request(srv: Server, method: str, path: str, body: bytes) -> tuple[int, bytes]:
    request = AWSRequest(method=method, url=srv.url + path, data=body,
                         headers={"x-amz-content-sha256": hashlib.sha256(body).hexdigest()})
    S3SigV4Auth(Credentials(DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"], DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]),
                "s3", "us-west-2").add_auth(request)
    response = httpx.request(method, srv.url + path, content=body, headers=dict(request.headers.items()))
    return response.status_code, response.content


def test_presigned_urls(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="shared.txt", Body=b"presigned")
    url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "shared.txt"}, ExpiresIn=60)
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.read() == b"presigned"
    upload = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "up.txt"}, ExpiresIn=60)
    assert httpx.put(upload, content=b"uploaded").status_code == 200
    assert s3.get_object(Bucket=bucket, Key="up.txt")["Body"].read() == b"uploaded"


# ---------------------------------------------------------------------------------------------------- the CLI


def test_aws_cli_mb_cp_ls_rm_rb(srv: Server, tmp_path: Path) -> None:
    aws = Path(sys.executable).parent / "aws"
    env = {
        "PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "AWS_ENDPOINT_URL": srv.url,
        "AWS_DEFAULT_REGION": "us-west-2", "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"), **DUMMY_CREDENTIALS,
    }

    def cli(*args: str) -> str:
        result = subprocess.run([str(aws), "s3", *args], env=env, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    bucket = unique("cli")
    small, big = tmp_path / "small.txt", tmp_path / "big.bin"
    small.write_text("a small note\n")
    data = os.urandom(9 * MB)
    big.write_bytes(data)
    cli("mb", f"s3://{bucket}")
    cli("cp", str(small), f"s3://{bucket}/notes/small.txt")
    cli("cp", str(big), f"s3://{bucket}/big.bin")  # 9 MB: the CLI uploads it in 8 MB parts
    listing = cli("ls", f"s3://{bucket}/", "--recursive")
    assert "notes/small.txt" in listing and "big.bin" in listing and str(9 * MB) in listing
    assert "PRE notes/" in cli("ls", f"s3://{bucket}/")
    assert bucket in cli("ls")
    cli("cp", f"s3://{bucket}/big.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data
    cli("cp", f"s3://{bucket}/notes/small.txt", str(tmp_path / "small-back.txt"))
    assert (tmp_path / "small-back.txt").read_text() == "a small note\n"
    head = srv.client("s3").head_object(Bucket=bucket, Key="big.bin")
    assert head["ETag"] == multipart_etag(data, 8 * MB)
    cli("rm", f"s3://{bucket}", "--recursive")
    cli("rb", f"s3://{bucket}")
    assert bucket not in cli("ls")


# ---------------------------------------------------------------------------------------------------- lifetime


def test_objects_survive_a_restart_and_an_external_store_turns_the_endpoint_off(tmp_path: Path) -> None:
    server = start_server(tmp_path, "--engine", "fake")
    try:
        s3 = server.client("s3")
        s3.create_bucket(Bucket="kept")
        s3.put_object(Bucket="kept", Key="odd//key/", Body=b"survives", Metadata={"a": "b"}, ContentType="text/x")
        s3.put_object(Bucket="kept", Key="plain.txt", Body=b"plain")
    finally:
        stop_server(server)
    server = start_server(tmp_path, "--engine", "fake")
    try:
        s3 = server.client("s3")
        got = s3.get_object(Bucket="kept", Key="odd//key/")
        assert got["Body"].read() == b"survives" and got["Metadata"] == {"a": "b"} and got["ContentType"] == "text/x"
        assert [c["Key"] for c in s3.list_objects_v2(Bucket="kept")["Contents"]] == ["odd//key/", "plain.txt"]
    finally:
        stop_server(server)
    # What S3 clients wrote is what the rest of llamarock reads through the blob store (knowledge-base sources).
    store = LocalBlobStore(tmp_path / "data" / "blobs")
    assert store.list("kept") == ["odd//key/", "plain.txt"] and store.get("kept", "odd//key/") == b"survives"
    (tmp_path / "external.toml").write_text('blob_store_url = "http://127.0.0.1:9"\n')
    server = start_server(tmp_path, "--engine", "fake", "--config", str(tmp_path / "external.toml"))
    try:
        code, status, message = error_of(server.client("s3").list_buckets)
        assert (code, status) == ("NotImplemented", 501) and "http://127.0.0.1:9" in message
    finally:
        stop_server(server)


# ---------------------------------------------------------------------------------------------------- enforce, TLS


def make_key(data_dir: Path, principal: str, policy: dict[str, Any] | None = None) -> dict[str, str]:
    args = ["create", "--principal", principal, "--json"]
    if policy is not None:
        path = data_dir.parent / f"{principal}.json"
        path.write_text(json.dumps(policy))
        args += ["--policy", str(path)]
    result = subprocess.run([sys.executable, "-m", "llamarock", "keys", *args, "--data-dir", str(data_dir)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("s3-enforce")
    server = start_server(tmp, "--engine", "fake", "--auth", "enforce", tls=True)
    yield server, tmp / "data"
    stop_server(server)


def client_for(server: Server, key: dict[str, str], secret: str | None = None) -> Any:
    return boto3.client("s3", region_name="us-west-2", endpoint_url=server.url, verify=str(server.cert),
                        aws_access_key_id=key["accessKeyId"],
                        aws_secret_access_key=secret or key["secretAccessKey"],
                        config=Config(retries={"mode": "standard", "max_attempts": 1}))


def test_enforce_evaluates_s3_actions_on_bucket_and_object_arns(enforced: tuple[Server, Path]) -> None:
    server, data = enforced
    admin = client_for(server, make_key(data, "s3admin"))  # no policy: bedrock:* and s3:*
    admin.create_bucket(Bucket="shared")
    admin.put_object(Bucket="shared", Key="public/a.txt", Body=b"a")
    admin.put_object(Bucket="shared", Key="private/b.txt", Body=b"b")
    reader = client_for(server, make_key(data, "reader", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::shared"},
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::shared/public/*"},
    ]}))
    assert [c["Key"] for c in reader.list_objects_v2(Bucket="shared")["Contents"]] == ["private/b.txt",
                                                                                      "public/a.txt"]
    assert reader.get_object(Bucket="shared", Key="public/a.txt")["Body"].read() == b"a"
    code, status, message = error_of(reader.get_object, Bucket="shared", Key="private/b.txt")
    assert (code, status) == ("AccessDenied", 403)
    assert "s3:GetObject on resource: arn:aws:s3:::shared/private/b.txt" in message
    assert error_of(reader.put_object, Bucket="shared", Key="public/c.txt", Body=b"c")[:2] == ("AccessDenied", 403)
    assert error_of(reader.list_buckets)[:2] == ("AccessDenied", 403)
    assert error_of(reader.copy_object, Bucket="shared", Key="public/copy", CopySource="shared/private/b.txt")[:2] \
        == ("AccessDenied", 403)
    # DeleteObjects is authorised key by key (s3:DeleteObject on each object), as on AWS.
    deleter = client_for(server, make_key(data, "deleter", {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:DeleteObject", "Resource": "arn:aws:s3:::shared/public/*"},
    ]}))
    result = deleter.delete_objects(Bucket="shared", Delete={"Objects": [{"Key": "public/a.txt"},
                                                                         {"Key": "private/b.txt"}]})
    assert [d["Key"] for d in result["Deleted"]] == ["public/a.txt"]
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("private/b.txt", "AccessDenied")]
    assert admin.get_object(Bucket="shared", Key="private/b.txt")["Body"].read() == b"b"
    wrong = client_for(server, make_key(data, "wrongsecret"), secret="not-the-secret")
    assert error_of(wrong.list_buckets)[:2] == ("SignatureDoesNotMatch", 403)
    unknown = client_for(server, {"accessKeyId": "AKIDNOBODY", "secretAccessKey": "x"})
    assert error_of(unknown.list_buckets)[:2] == ("InvalidAccessKeyId", 403)
    anonymous = httpx.get(server.url + "/shared", verify=server.ssl_context())
    assert anonymous.status_code == 403 and xml_error(anonymous.content)["Code"] == "AccessDenied"


def test_boto3_over_https_sends_aws_chunked_trailers_that_are_verified(enforced: tuple[Server, Path],
                                                                         tmp_path: Path) -> None:
    server, data = enforced
    s3 = client_for(server, make_key(data, "chunky"))
    seen: list[str] = []
    s3.meta.events.register("before-send.s3.PutObject",
                            lambda request, **_: seen.append(request.headers.get("x-amz-content-sha256", b"")))
    s3.create_bucket(Bucket="chunked")
    put = s3.put_object(Bucket="chunked", Key="t.txt", Body=b"trailing checksum")
    assert [v.decode() if isinstance(v, bytes) else v for v in seen] == ["STREAMING-UNSIGNED-PAYLOAD-TRAILER"]
    crc = base64.b64encode(zlib.crc32(b"trailing checksum").to_bytes(4, "big")).decode()
    assert put["ChecksumCRC32"] == crc
    assert s3.get_object(Bucket="chunked", Key="t.txt", ChecksumMode="ENABLED")["Body"].read() == b"trailing checksum"
    big = os.urandom(10 * MB)
    (tmp_path / "big").write_bytes(big)
    s3.upload_file(str(tmp_path / "big"), "chunked", "big", Config=TransferConfig(multipart_threshold=8 * MB))
    assert s3.head_object(Bucket="chunked", Key="big")["ETag"] == multipart_etag(big, 8 * MB)
    # A trailer that does not match the body.
    body = b"5\r\nhello\r\n0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    headers, _ = sign_headers(server, data, "/chunked/bad", "STREAMING-UNSIGNED-PAYLOAD-TRAILER", {
        "x-amz-trailer": "x-amz-checksum-crc32", "content-encoding": "aws-chunked", "x-amz-decoded-content-length": "5",
    })
    response = httpx.put(server.url + "/chunked/bad", content=body, headers=headers, verify=server.ssl_context())
    assert response.status_code == 400 and xml_error(response.content)["Code"] == "BadDigest", response.content
    assert error_of(s3.head_object, Bucket="chunked", Key="bad")[:2] == ("404", 404)


SIGNERS: dict[Path, dict[str, str]] = {}  # one signing key per server's data folder (keys take a process to make)


def sign_headers(server: Server, data: Path, path: str, payload: str,
                 extra: dict[str, str]) -> tuple[dict[str, str], str]:
    """The signed headers (and the secret) of a key with full access for a PUT of ``path`` whose payload hash is
    ``payload``."""
    key = SIGNERS.get(data) or SIGNERS.setdefault(data, make_key(data, "signer"))

    class Signer(S3SigV4Auth):  # type: ignore[misc]
        def payload(self, request: Any) -> str:
            return payload

    request = AWSRequest(method="PUT", url=server.url + path, headers={"x-amz-content-sha256": payload, **extra})
    Signer(Credentials(key["accessKeyId"], key["secretAccessKey"]), "s3", "us-west-2").add_auth(request)
    return dict(request.headers.items()), key["secretAccessKey"]


def test_signed_aws_chunked_bodies(enforced: tuple[Server, Path]) -> None:
    """STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, as the Java SDK and the AWS CLI v2 send it: every chunk signed,
    chained from the request's signature, then a signed trailer."""
    server, data = enforced
    client_for(server, make_key(data, "mkbucket")).create_bucket(Bucket="signed-chunks")
    payload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
    chunks = [os.urandom(70_000), os.urandom(1000)]
    extra = {"content-encoding": "aws-chunked", "x-amz-trailer": "x-amz-checksum-crc32",
             "x-amz-decoded-content-length": str(sum(map(len, chunks)))}

    def send(tamper: bool) -> httpx.Response:
        headers, secret = sign_headers(server, data, "/signed-chunks/obj", payload, extra)
        authorization = headers["Authorization"]
        seed = authorization.rsplit("Signature=", 1)[1]
        timestamp = headers["X-Amz-Date"]
        scope = f"{timestamp[:8]}/us-west-2/s3/aws4_request"
        key = ("AWS4" + secret).encode()
        for part in (timestamp[:8], "us-west-2", "s3", "aws4_request"):
            key = hmac_sha256(key, part)
        body, previous = b"", seed
        for chunk in [*chunks, b""]:
            signature = hmac_sha256(key, "\n".join([
                "AWS4-HMAC-SHA256-PAYLOAD", timestamp, scope, previous, hashlib.sha256(b"").hexdigest(),
                hashlib.sha256(chunk).hexdigest()])).hex()
            if tamper and chunk is chunks[1]:
                signature = "0" * 64
            body += f"{len(chunk):x};chunk-signature={signature}\r\n".encode() + chunk + (b"\r\n" if chunk else b"")
            previous = signature
        crc = base64.b64encode(zlib.crc32(b"".join(chunks)).to_bytes(4, "big")).decode()
        trailer = f"x-amz-checksum-crc32:{crc}\n"
        trailer_signature = hmac_sha256(key, "\n".join([
            "AWS4-HMAC-SHA256-TRAILER", timestamp, scope, previous,
            hashlib.sha256(trailer.encode()).hexdigest()])).hex()
        body += f"x-amz-checksum-crc32:{crc}\r\nx-amz-trailer-signature:{trailer_signature}\r\n\r\n".encode()
        return httpx.put(server.url + "/signed-chunks/obj", content=body, headers=headers,
                         verify=server.ssl_context())

    good = send(tamper=False)
    assert good.status_code == 200, good.content
    admin = client_for(server, make_key(data, "reader2"))
    assert admin.get_object(Bucket="signed-chunks", Key="obj")["Body"].read() == b"".join(chunks)
    bad = send(tamper=True)
    assert bad.status_code == 403 and xml_error(bad.content)["Code"] == "SignatureDoesNotMatch"


def hmac_sha256(key: bytes, message: str) -> bytes:
    import hmac

    return hmac.new(key, message.encode(), hashlib.sha256).digest()


def test_chunk_signatures_match_aws_documented_example() -> None:
    """The known answer of S3's "Signature Calculations for the Authorization Header: Transferring Payload in
    Multiple Chunks" example (64 KiB + 1 KiB of 'a', secret wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY)."""
    from llamarock.auth.sigv4 import SignedRequest, stream_signing
    from llamarock.codec.aws_chunked import ChunkedDecoder, ChunkSigning

    seed = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
    signed = SignedRequest("AKIAIOSFODNN7EXAMPLE", "20130524", "us-east-1", "s3", "20130524T000000Z", ("host",),
                           seed, False, None, None)
    material = stream_signing(signed, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    signatures = ["ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
                  "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
                  "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"]
    body = b"".join(f"{len(c):x};chunk-signature={s}\r\n".encode() + c + b"\r\n"
                    for c, s in zip([b"a" * 65536, b"a" * 1024, b""], signatures, strict=True))
    decoder = ChunkedDecoder(ChunkSigning(material.key, material.timestamp, material.scope, material.seed))
    out = b"".join(decoder.feed(body[i:i + 777]) for i in range(0, len(body), 777))
    assert out == b"a" * 66560 and decoder.finish() == {}
