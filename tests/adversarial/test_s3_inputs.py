"""Hostile input to the S3 endpoint (hypothesis): keys, Range headers, XML documents, aws-chunked framing and
digests. Whatever arrives, the answer is one of S3's declared errors (never a 500), nothing escapes the blob folder,
and a body that fails its checks stores nothing."""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree import ElementTree

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Server, start_server, stop_server

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("s3-fuzz"), "--engine", "fake")
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def bucket(srv: Server) -> str:
    name = f"fuzz-{uuid.uuid4().hex[:8]}"
    assert httpx.put(f"{srv.url}/{name}").status_code == 200
    assert httpx.put(f"{srv.url}/{name}/object", content=b"0123456789" * 10).status_code == 200
    return name


def _s3_error(response: httpx.Response) -> str:
    assert response.status_code < 500 or response.status_code == 501, (response.status_code, response.content)
    if response.status_code >= 400 and response.content:
        root = ElementTree.fromstring(response.content)
        assert root.tag == "Error" and root.find("Code") is not None
        return root.findtext("Code") or ""
    return ""


def _outside(srv: Server) -> list[Path]:
    data = srv.log_path.parent / "data"
    return [p for p in data.parent.rglob("*") if p.is_file() and not p.is_relative_to(data)
            and p.name not in ("server.log", "config.toml")]


@FUZZ
@given(key=st.text(min_size=1, max_size=80))
def test_any_key_round_trips_or_is_refused(srv: Server, bucket: str, key: str) -> None:
    url = f"{srv.url}/{bucket}/{quote(key, safe='')}"
    put = httpx.put(url, content=key.encode("utf-8", "surrogatepass"))
    code = _s3_error(put)
    if put.status_code == 200:
        got = httpx.get(url)
        assert got.status_code == 200 and got.content == key.encode("utf-8", "surrogatepass")
        assert httpx.delete(url).status_code == 204
    else:
        assert code in ("InvalidArgument", "KeyTooLongError", "NotImplemented", "MethodNotAllowed"), code
    assert _outside(srv) == []


@FUZZ
@given(spec=st.one_of(st.text(max_size=30), st.builds(
    lambda a, b: f"bytes={a}-{b}", st.one_of(st.just(""), st.integers(0, 200).map(str)),
    st.one_of(st.just(""), st.integers(0, 200).map(str)))))
def test_any_range_is_answered_as_s3_does(srv: Server, bucket: str, spec: str) -> None:
    try:
        response = httpx.get(f"{srv.url}/{bucket}/object", headers={"Range": spec})
    except (httpx.LocalProtocolError, UnicodeEncodeError):
        return  # not a header value the client sends
    code = _s3_error(response)
    assert response.status_code in (200, 206, 416), (spec, response.status_code)
    if response.status_code == 416:
        assert code == "InvalidRange"
    data = b"0123456789" * 10
    if response.status_code == 206:
        first, last = response.headers["content-range"].split(" ")[1].split("/")[0].split("-")
        assert response.content == data[int(first):int(last) + 1]


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode), st.builds(
    lambda keys, quiet: ("<Delete>" + "".join(f"<Object><Key>{k}</Key></Object>" for k in keys)
                         + (f"<Quiet>{quiet}</Quiet>" if quiet else "") + "</Delete>").encode(),
    st.lists(st.text(alphabet="abc/<>&;.", max_size=10), max_size=4), st.sampled_from(["", "true", "x"]))))
def test_any_delete_document(srv: Server, bucket: str, body: bytes) -> None:
    digest = base64.b64encode(hashlib.md5(body).digest()).decode()
    response = httpx.post(f"{srv.url}/{bucket}?delete", content=body, headers={"Content-MD5": digest})
    code = _s3_error(response)
    assert response.status_code == 200 or code in ("MalformedXML", "InvalidArgument", "KeyTooLongError"), code
    assert httpx.get(f"{srv.url}/{bucket}/object").status_code == 200  # 'object' was never named


@FUZZ
@given(body=st.one_of(st.binary(max_size=200), st.lists(st.sampled_from([
    b"5\r\nhello\r\n", b"0\r\n", b"\r\n", b"x-amz-checksum-crc32:AAAAAA==\r\n", b"zz\r\n", b"3;chunk-signature=ab\r\n",
    b"ffffffffffffffff\r\n", b"abc",
]), max_size=8).map(b"".join)))
def test_any_aws_chunked_body_stores_nothing_unless_it_is_whole(srv: Server, bucket: str, body: bytes) -> None:
    key = f"chunked-{uuid.uuid4().hex[:8]}"
    response = httpx.put(f"{srv.url}/{bucket}/{key}", content=body, headers={
        "content-encoding": "aws-chunked", "x-amz-content-sha256": "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "x-amz-trailer": "x-amz-checksum-crc32",
    })
    code = _s3_error(response)
    if response.status_code != 200:
        assert code in ("IncompleteBody", "BadDigest", "InvalidDigest", "InvalidRequest", "EntityTooLarge"), code
        assert httpx.head(f"{srv.url}/{bucket}/{key}").status_code == 404


@FUZZ
@given(headers=st.dictionaries(st.sampled_from([
    "content-md5", "x-amz-checksum-crc32", "x-amz-checksum-sha256", "x-amz-content-sha256", "content-length",
    "x-amz-decoded-content-length", "x-amz-trailer", "content-encoding", "x-amz-copy-source",
    "x-amz-metadata-directive", "if-match", "if-none-match", "if-modified-since",
]), st.text(alphabet="abcdefAZ09+/=-: ,*\"", max_size=40), max_size=4))
def test_any_s3_headers_on_put_and_get(srv: Server, bucket: str, headers: dict[str, Any]) -> None:
    key = f"h-{uuid.uuid4().hex[:8]}"
    try:
        put = httpx.put(f"{srv.url}/{bucket}/{key}", content=b"body", headers=headers)
    except httpx.HTTPError:
        return  # a content-length the client itself will not send
    _s3_error(put)
    _s3_error(httpx.get(f"{srv.url}/{bucket}/object", headers={
        k: v for k, v in headers.items() if k.startswith("if-")}))
