"""The S3 endpoint (docs/s3.md): botocore's ``s3`` operations on the local blob store, on the Bedrock port.

The edge resolves S3 requests against botocore's s3 model like any other (``routes/operations.py``: requests signed
for service ``s3``, and unsigned requests no Bedrock operation matches), authenticates them (SigV4 with S3's
canonical URI) and authorises their ``s3:*`` action on ``arn:aws:s3:::bucket[/key]``; its errors become S3's XML
``<Error>`` (``error_shape="s3"``). Handlers here read the request's S3 headers and query, call
:class:`~llamarock.services.s3.S3Service`, and answer S3's headers and XML documents.

PutObject and UploadPart bodies are not read whole by the edge (``streams_body``): :func:`_payload` takes them as
they arrive, removes the ``aws-chunked`` framing and checks chunk signatures when there is one, and checks the body
against every digest the request carries (``x-amz-content-sha256``, ``Content-MD5``, ``x-amz-checksum-*`` in a
header or trailer) before the object is committed.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from llamarock.auth import sigv4
from llamarock.auth.gate import Gate
from llamarock.codec import rest_xml as xml
from llamarock.codec.aws_chunked import (
    ALGORITHMS,
    DIGEST_SIZES,
    Checksum,
    ChunkedDecoder,
    ChunkSigning,
    check_length,
    decode_base64_digest,
)
from llamarock.context import RequestContext
from llamarock.errors import (
    BadDigest,
    BedrockError,
    ContentSHA256Mismatch,
    EntityTooLarge,
    IncompleteBody,
    InvalidArgument,
    InvalidRange,
    InvalidRequest,
    MalformedXML,
    MethodNotAllowed,
    PreconditionFailed,
    RequestTimeoutException,
)
from llamarock.services.s3 import (
    MAX_KEYS,
    MAX_OBJECT_BYTES,
    Listing,
    ObjectInfo,
    PartInfo,
    S3Service,
    check_key,
    decode_token,
    encode_token,
)

_STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_READ_BLOCK = 1 << 20
MAX_DELETE_KEYS = 1000


def _service(request: Request) -> S3Service:
    service: S3Service = request.app.state.s3
    return service


def _context(request: Request) -> RequestContext:
    context: RequestContext = request.state.context
    return context


def _labels(request: Request) -> tuple[str, str]:
    labels = _context(request).labels
    return labels.get("Bucket", ""), labels.get("Key", "")


def _query(request: Request) -> dict[str, str]:
    return dict(parse_qsl(request.url.query, keep_blank_values=True))


def _xml(element: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(xml.serialize(element), status_code=status, media_type=xml.CONTENT_TYPE, headers=headers)


def _empty(status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(b"", status_code=status, headers=headers)


def _arn(bucket: str, key: str | None = None) -> str:
    return f"arn:aws:s3:::{bucket}" if key is None else f"arn:aws:s3:::{bucket}/{key}"


def _authorize(request: Request, action: str, resource: str) -> None:
    gate: Gate = request.app.state.gate
    gate.authorize(_context(request), action, resource)


async def method_not_allowed(request: Request) -> Response:
    """A request signed for S3 that no S3 operation has (e.g. POST to an object with neither ``?uploads`` nor
    ``uploadId``)."""
    raise MethodNotAllowed("The specified method is not allowed against this resource.", Method=request.method,
                           ResourceType="OBJECT" if _labels(request)[1] else "BUCKET")


# ---------------------------------------------------------------------------------------------------- buckets


async def list_buckets(request: Request) -> Response:
    buckets = await _service(request).list_buckets()
    owner = xml.node("Owner", ID=request.app.state.settings.account_id, DisplayName="llamarock")
    listing = xml.node("Buckets", *(xml.node("Bucket", Name=name, CreationDate=created) for name, created in buckets))
    return _xml(xml.document("ListAllMyBucketsResult", owner, listing))


async def create_bucket(request: Request) -> Response:
    bucket, _ = _labels(request)
    body = _context(request).body
    if body.strip():
        xml.parse_document(body, "CreateBucketConfiguration")  # LocationConstraint: one region here, any is fine
    await _service(request).create_bucket(bucket)
    return _empty(headers={"Location": f"/{bucket}"})


async def head_bucket(request: Request) -> Response:
    bucket, _ = _labels(request)
    service = _service(request)
    await service.head_bucket(bucket)
    return _empty(headers={"x-amz-bucket-region": service.region})


async def delete_bucket(request: Request) -> Response:
    bucket, _ = _labels(request)
    await _service(request).delete_bucket(bucket)
    return _empty(204)


async def get_bucket_location(request: Request) -> Response:
    bucket, _ = _labels(request)
    service = _service(request)
    await service.head_bucket(bucket)
    element = xml.document("LocationConstraint")
    element.text = "" if service.region == "us-east-1" else service.region
    return _xml(element)


# ---------------------------------------------------------------------------------------------------- listings


def _max_keys(query: dict[str, str]) -> int:
    raw = query.get("max-keys", str(MAX_KEYS))
    if not raw.isdigit():
        raise InvalidArgument("Provided max-keys not an integer or within integer range", ArgumentName="max-keys",
                              ArgumentValue=raw)
    return min(int(raw), MAX_KEYS)


def _encoder(query: dict[str, str]) -> Any:
    encoding = query.get("encoding-type")
    if encoding is None:
        return lambda value: value
    if encoding != "url":
        raise InvalidArgument("Invalid Encoding Method specified in Request", ArgumentName="encoding-type",
                              ArgumentValue=encoding)
    return lambda value: quote(value, safe="/")


def _contents(listing: Listing, encode: Any) -> list[Any]:
    return [xml.node("Contents", Key=encode(item.key), LastModified=item.last_modified, ETag=item.etag,
                     Size=item.size, StorageClass="STANDARD") for item in listing.contents]


def _prefixes(listing: Listing, encode: Any) -> list[Any]:
    return [xml.node("CommonPrefixes", Prefix=encode(prefix)) for prefix in listing.prefixes]


async def list_objects_v2(request: Request) -> Response:
    bucket, _ = _labels(request)
    query = _query(request)
    encode = _encoder(query)
    prefix, delimiter, max_keys = query.get("prefix", ""), query.get("delimiter", ""), _max_keys(query)
    token, start_after = query.get("continuation-token"), query.get("start-after", "")
    after = decode_token(token) if token is not None else start_after
    listing = await _service(request).list_objects(bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
                                                   after=after)
    fields: dict[str, object] = {"Name": bucket, "Prefix": encode(prefix)}
    if delimiter:
        fields["Delimiter"] = encode(delimiter)
    fields.update(MaxKeys=max_keys, KeyCount=len(listing.contents) + len(listing.prefixes),
                  IsTruncated=listing.truncated)
    if "encoding-type" in query:
        fields["EncodingType"] = "url"
    if token is not None:
        fields["ContinuationToken"] = token
    if listing.truncated:
        fields["NextContinuationToken"] = encode_token(listing.last)
    if start_after:
        fields["StartAfter"] = encode(start_after)
    root = xml.document("ListBucketResult", *(xml.leaf(k, v) for k, v in fields.items()),
                        *_contents(listing, encode), *_prefixes(listing, encode))
    return _xml(root)


async def list_objects(request: Request) -> Response:
    bucket, _ = _labels(request)
    query = _query(request)
    encode = _encoder(query)
    prefix, delimiter, max_keys = query.get("prefix", ""), query.get("delimiter", ""), _max_keys(query)
    marker = query.get("marker", "")
    listing = await _service(request).list_objects(bucket, prefix=prefix, delimiter=delimiter, max_keys=max_keys,
                                                   after=marker)
    fields: dict[str, object] = {"Name": bucket, "Prefix": encode(prefix), "Marker": encode(marker)}
    if delimiter:
        fields["Delimiter"] = encode(delimiter)
    fields.update(MaxKeys=max_keys, IsTruncated=listing.truncated)
    if "encoding-type" in query:
        fields["EncodingType"] = "url"
    if listing.truncated:
        fields["NextMarker"] = encode(listing.last)
    root = xml.document("ListBucketResult", *(xml.leaf(k, v) for k, v in fields.items()),
                        *_contents(listing, encode), *_prefixes(listing, encode))
    return _xml(root)


# ---------------------------------------------------------------------------------------------------- bodies


def _algorithm_headers(request: Request) -> dict[str, str]:
    """``x-amz-checksum-<algorithm>`` headers: algorithm -> base64 value, each checked for its digest's size."""
    found = {}
    for algorithm in ALGORITHMS:
        value = request.headers.get(f"x-amz-checksum-{algorithm}")
        if value is not None:
            decode_base64_digest(value, DIGEST_SIZES[algorithm], f"x-amz-checksum-{algorithm}")
            found[algorithm] = value.strip()
    return found


async def _payload(request: Request, given: dict[str, str]) -> AsyncIterator[bytes]:
    """The body as it arrives, framing removed; raises the S3 error of the first check it fails once it ends (or
    as soon as a chunk signature fails). ``given`` gets the checksums the body was checked against (algorithm ->
    base64), which S3 stores and answers."""
    context = _context(request)
    headers = request.headers
    declared = headers.get("x-amz-content-sha256", sigv4.UNSIGNED_PAYLOAD)
    if "X-Amz-Credential" in request.query_params:
        declared = sigv4.UNSIGNED_PAYLOAD
    encoding = [part.strip() for part in headers.get("content-encoding", "").split(",")]
    chunked = declared in sigv4.STREAMING_PAYLOADS or "aws-chunked" in encoding
    if not chunked and declared != sigv4.UNSIGNED_PAYLOAD and not _HEX64.match(declared):
        raise InvalidArgument(f"x-amz-content-sha256 {declared[:80]!r} is not a value S3 takes.",
                              ArgumentName="x-amz-content-sha256")
    length = check_length(headers.get("content-length"), "Content-Length")
    decoded_length = check_length(headers.get("x-amz-decoded-content-length"), "x-amz-decoded-content-length")
    expected_size = decoded_length if chunked else length
    if expected_size is not None and expected_size > MAX_OBJECT_BYTES:
        raise EntityTooLarge(f"Your proposed upload exceeds the maximum allowed size of {MAX_OBJECT_BYTES} bytes.",
                             ProposedSize=expected_size, MaxSizeAllowed=MAX_OBJECT_BYTES)
    signed_chunks = chunked and declared.startswith("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")
    signing = context.signing if signed_chunks else None
    decoder = ChunkedDecoder(ChunkSigning(signing.key, signing.timestamp, signing.scope, signing.seed)
                             if signing is not None else None) if chunked else None
    sha256 = hashlib.sha256() if _HEX64.match(declared) else None
    content_md5 = headers.get("content-md5")
    md5_expected = decode_base64_digest(content_md5, 16, "Content-MD5") if content_md5 is not None else None
    md5 = hashlib.md5(usedforsecurity=False) if md5_expected is not None else None
    checksums = {algorithm: (Checksum(algorithm), value) for algorithm, value in _algorithm_headers(request).items()}
    trailer = headers.get("x-amz-trailer", "").strip().lower()
    trailer_algorithm = trailer.removeprefix("x-amz-checksum-") if trailer.startswith("x-amz-checksum-") else None
    if trailer and (trailer_algorithm not in ALGORITHMS or not chunked):
        raise InvalidRequest(f"The x-amz-trailer {trailer[:64]!r} is not one S3 takes (x-amz-checksum-<algorithm>, "
                             "with an aws-chunked body).")
    trailing = Checksum(trailer_algorithm) if trailer_algorithm is not None else None
    timeout = request.app.state.settings.body_read_timeout_s
    size = 0
    while True:
        try:
            async with asyncio.timeout(timeout):
                message = await request.receive()
        except TimeoutError:
            raise RequestTimeoutException(
                f"Your socket connection to the server was not read from or written to within the timeout period "
                f"({timeout:g} s, body_read_timeout_s)."
            ) from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        raw = message.get("body", b"")
        data = decoder.feed(raw) if decoder is not None else raw
        if data:
            size += len(data)
            for hasher in (sha256, md5):
                if hasher is not None:
                    hasher.update(raw if hasher is sha256 and chunked else data)
            for checksum, _ in checksums.values():
                checksum.update(data)
            if trailing is not None:
                trailing.update(data)
            yield data
        elif raw and sha256 is not None and chunked:
            sha256.update(raw)
        if not message.get("more_body", False):
            break
    trailers = decoder.finish() if decoder is not None else {}
    if expected_size is not None and size != expected_size:
        raise IncompleteBody(f"You did not provide the number of bytes specified by the "
                             f"{'x-amz-decoded-content-length' if chunked else 'Content-Length'} HTTP header "
                             f"({expected_size}); the body had {size}.")
    if sha256 is not None and sha256.hexdigest() != declared:
        raise ContentSHA256Mismatch("The provided 'x-amz-content-sha256' header does not match what was computed.")
    if md5 is not None and md5.digest() != md5_expected:
        raise BadDigest("The Content-MD5 you specified did not match what we received.")
    for algorithm, (checksum, value) in checksums.items():
        if checksum.value() != value:
            raise BadDigest(f"The {algorithm.upper()} you specified did not match the calculated checksum.")
    if trailing is not None:
        sent = trailers.get(trailer)
        if sent is None:
            raise InvalidRequest(f"The aws-chunked body has no {trailer} trailer, which x-amz-trailer announced.")
        decode_base64_digest(sent, DIGEST_SIZES[trailing.algorithm], trailer)
        if trailing.value() != sent.strip():
            raise BadDigest(f"The {trailing.algorithm.upper()} you specified did not match the calculated checksum.")
        checksums[trailing.algorithm] = (trailing, sent.strip())
    given.update({algorithm: value for algorithm, (_, value) in checksums.items()})


def _object_info(request: Request, key: str) -> ObjectInfo:
    """What a PutObject / CreateMultipartUpload / CopyObject(REPLACE) request says about the object."""
    headers = request.headers
    metadata = {name[len("x-amz-meta-"):]: value for name, value in headers.items()
                if name.startswith("x-amz-meta-")}
    if sum(len(k) + len(v) for k, v in metadata.items()) > 2048:
        raise InvalidArgument("Your metadata headers exceed the maximum allowed metadata size (2 KB).")
    stored = {}
    for name in _STORED_HEADERS:
        value = headers.get(name)
        if name == "content-encoding" and value is not None:
            value = ",".join(p.strip() for p in value.split(",") if p.strip() and p.strip() != "aws-chunked")
        if value:
            stored[name] = value
    return ObjectInfo(key, None, 0, "", datetime.now(UTC),  # type: ignore[arg-type]  # path: set on commit
                      headers.get("content-type") or "binary/octet-stream", metadata, stored)


def _checksum_headers(checksums: dict[str, str]) -> dict[str, str]:
    return {f"x-amz-checksum-{algorithm}": value for algorithm, value in checksums.items()}


# ---------------------------------------------------------------------------------------------------- objects


async def put_object(request: Request) -> Response:
    bucket, key = _labels(request)
    check_key(key)
    service = _service(request)
    await service.head_bucket(bucket)  # before the body: a missing bucket is refused without storing anything
    info = _object_info(request, key)
    info.checksum = {}
    body = await service.receive(_payload(request, info.checksum))
    stored = await service.put_object(bucket, key, body, info)
    return _empty(headers={"ETag": stored.etag, **_checksum_headers(info.checksum)})


def _object_headers(info: ObjectInfo, request: Request) -> dict[str, str]:
    headers = {
        "ETag": info.etag,
        "Last-Modified": xml.http_date(info.last_modified),
        "Content-Type": info.content_type,
        "Accept-Ranges": "bytes",
        **{f"x-amz-meta-{name}": value for name, value in info.metadata.items()},
        **{name.title(): value for name, value in info.headers.items()},
    }
    if info.parts:
        headers["x-amz-mp-parts-count"] = str(info.parts)
    if request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED" and "range" not in request.headers:
        headers.update(_checksum_headers(info.checksum))
    query = _query(request)
    for name in ("content-type", "content-language", "expires", "cache-control", "content-disposition",
                 "content-encoding"):
        override = query.get(f"response-{name}")
        if override is not None:
            headers[name.title()] = override
    return headers


def _not_modified(info: ObjectInfo, request: Request) -> bool:
    """S3's conditional GET/HEAD: PreconditionFailed, or True when the answer is 304 Not Modified."""
    headers = request.headers
    modified = info.last_modified.replace(microsecond=0)
    if_match = headers.get("if-match")
    if if_match is not None and not _etag_matches(if_match, info.etag):
        raise PreconditionFailed("At least one of the pre-conditions you specified did not hold",
                                 Condition="If-Match")
    since = xml.parse_http_date(headers.get("if-unmodified-since", ""))
    if if_match is None and since is not None and modified > since:
        raise PreconditionFailed("At least one of the pre-conditions you specified did not hold",
                                 Condition="If-Unmodified-Since")
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        return _etag_matches(if_none_match, info.etag)
    since = xml.parse_http_date(headers.get("if-modified-since", ""))
    return since is not None and modified <= since


def _etag_matches(condition: str, etag: str) -> bool:
    wanted = {part.strip().removeprefix("W/").strip('"') for part in condition.split(",")}
    return "*" in wanted or etag.strip('"') in wanted


def _range(header: str | None, size: int) -> tuple[int, int] | None:
    """The inclusive byte range a ``Range`` header asks for; None for the whole object (no header, or one S3
    ignores); InvalidRange when it asks for nothing the object has."""
    if header is None:
        return None
    found = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if found is None or (not found[1] and not found[2]):
        return None  # several ranges, or not bytes: S3 answers the whole object
    if not found[1]:
        suffix = int(found[2])
        if suffix == 0 or size == 0:
            raise InvalidRange("The requested range is not satisfiable", RangeRequested=header.strip(),
                               ActualObjectSize=size)
        return max(0, size - suffix), size - 1
    start = int(found[1])
    end = int(found[2]) if found[2] else size - 1
    if start >= size or (found[2] and end < start):
        if found[2] and end < start:
            return None  # a syntactically invalid range is ignored, as RFC 9110 says
        raise InvalidRange("The requested range is not satisfiable", RangeRequested=header.strip(),
                           ActualObjectSize=size)
    return start, min(end, size - 1)


async def _read(info: ObjectInfo, start: int, length: int) -> AsyncIterator[bytes]:
    file = await asyncio.to_thread(info.path.open, "rb")
    try:
        await asyncio.to_thread(file.seek, start)
        left = length
        while left > 0:
            block = await asyncio.to_thread(file.read, min(_READ_BLOCK, left))
            if not block:
                break
            left -= len(block)
            yield block
    finally:
        await asyncio.to_thread(file.close)


async def get_object(request: Request) -> Response:
    bucket, key = _labels(request)
    info = await _service(request).head_object(bucket, key)
    headers = _object_headers(info, request)
    if _not_modified(info, request):
        return _empty(304, {k: v for k, v in headers.items() if k in ("ETag", "Last-Modified")})
    span = _range(request.headers.get("range"), info.size)
    start, end = span if span is not None else (0, info.size - 1)
    length = end - start + 1 if info.size else 0
    headers["Content-Length"] = str(length)
    status = 200
    if span is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{info.size}"
    # The Content-Type as stored, in headers: a media_type would get a charset added.
    return StreamingResponse(_read(info, start, length), status_code=status, headers=headers)


async def head_object(request: Request) -> Response:
    bucket, key = _labels(request)
    info = await _service(request).head_object(bucket, key)
    headers = _object_headers(info, request)
    if _not_modified(info, request):
        return _empty(304, {k: v for k, v in headers.items() if k in ("ETag", "Last-Modified")})
    span = _range(request.headers.get("range"), info.size)
    status = 200
    length = info.size
    if span is not None:
        status, length = 206, span[1] - span[0] + 1
        headers["Content-Range"] = f"bytes {span[0]}-{span[1]}/{info.size}"
    headers["Content-Length"] = str(length)
    return _empty(status, headers)


async def delete_object(request: Request) -> Response:
    bucket, key = _labels(request)
    service = _service(request)
    await service.head_bucket(bucket)
    await service.delete_object(bucket, key)
    return _empty(204)


async def delete_objects(request: Request) -> Response:
    bucket, _ = _labels(request)
    context = _context(request)
    service = _service(request)
    await service.head_bucket(bucket)
    _check_small_body(request, context.body)
    document = xml.parse_document(context.body, "Delete")
    quiet = (xml.child_text(document, "Quiet") or "").strip().lower() == "true"
    objects = xml.children(document, "Object")
    if not objects or len(objects) > MAX_DELETE_KEYS:
        raise MalformedXML(f"The XML you provided was not well-formed or did not validate against our published "
                           f"schema: Delete takes 1 to {MAX_DELETE_KEYS} Object elements, not {len(objects)}.")
    results = []
    for element in objects:
        key = xml.child_text(element, "Key")
        if key is None:
            raise MalformedXML("The XML you provided was not well-formed or did not validate against our published "
                               "schema: an Object has no Key.")
        try:
            check_key(key)
            _authorize(request, "s3:DeleteObject", _arn(bucket, key))
            await service.delete_object(bucket, key)
        except BedrockError as error:  # each key fails on its own, as on S3
            results.append(xml.node("Error", Key=key, Code=xml.s3_code(error)[0], Message=error.message))
            continue
        if not quiet:
            results.append(xml.node("Deleted", Key=key))
    return _xml(xml.document("DeleteResult", *results))


def _check_small_body(request: Request, body: bytes) -> None:
    """The Content-MD5 and x-amz-checksum-* of a body read whole (DeleteObjects, CompleteMultipartUpload)."""
    content_md5 = request.headers.get("content-md5")
    if content_md5 is not None and hashlib.md5(body, usedforsecurity=False).digest() != decode_base64_digest(
            content_md5, 16, "Content-MD5"):
        raise BadDigest("The Content-MD5 you specified did not match what we received.")
    for algorithm, value in _algorithm_headers(request).items():
        checksum = Checksum(algorithm)
        checksum.update(body)
        if checksum.value() != value:
            raise BadDigest(f"The {algorithm.upper()} you specified did not match the calculated checksum.")


def _copy_source(request: Request) -> tuple[str, str]:
    raw = request.headers.get("x-amz-copy-source", "")
    path, _, version = raw.partition("?")
    source = unquote(path).lstrip("/")
    bucket, _, key = source.partition("/")
    if not bucket or not key:
        raise InvalidArgument("Copy Source must mention the source bucket and key: sourcebucket/sourcekey",
                              ArgumentName="x-amz-copy-source", ArgumentValue=raw)
    if version and not version.startswith("versionId=null"):
        raise InvalidArgument("This server keeps no object versions: copy the current object (no versionId).",
                              ArgumentName="x-amz-copy-source", ArgumentValue=raw)
    return bucket, key


async def copy_object(request: Request) -> Response:
    bucket, key = _labels(request)
    source_bucket, source_key = _copy_source(request)
    _authorize(request, "s3:GetObject", _arn(source_bucket, source_key))
    service = _service(request)
    await service.head_bucket(bucket)
    source = await service.head_object(source_bucket, source_key)
    directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise InvalidArgument("Unknown metadata directive.", ArgumentName="x-amz-metadata-directive",
                              ArgumentValue=directive)
    if (source_bucket, source_key) == (bucket, key) and directive == "COPY":
        raise InvalidRequest(
            "This copy request is illegal because it is trying to copy an object to itself without changing the "
            "object's metadata, storage class, website redirect location or encryption attributes."
        )
    match = request.headers.get("x-amz-copy-source-if-match")
    if match is not None and not _etag_matches(match, source.etag):
        raise PreconditionFailed("At least one of the pre-conditions you specified did not hold",
                                 Condition="x-amz-copy-source-If-Match")
    info = _object_info(request, key) if directive == "REPLACE" else None
    stored = await service.copy_object(source, bucket, key, info)
    result = xml.document("CopyObjectResult", xml.leaf("ETag", stored.etag),
                          xml.leaf("LastModified", stored.last_modified))
    return _xml(result)


# ---------------------------------------------------------------------------------------------------- multipart


def _upload_id(request: Request) -> str:
    return _query(request).get("uploadId", "")


async def create_multipart_upload(request: Request) -> Response:
    bucket, key = _labels(request)
    check_key(key)
    info = _object_info(request, key)
    upload_id = await _service(request).create_upload(bucket, key, info)
    headers = {}
    algorithm = request.headers.get("x-amz-checksum-algorithm")
    if algorithm:
        headers["x-amz-checksum-algorithm"] = algorithm
    return _xml(xml.document("InitiateMultipartUploadResult", xml.leaf("Bucket", bucket), xml.leaf("Key", key),
                             xml.leaf("UploadId", upload_id)), headers=headers)


async def upload_part(request: Request) -> Response:
    bucket, key = _labels(request)
    raw_number = _query(request).get("partNumber", "")
    if not raw_number.isdigit():
        raise InvalidArgument("Part number must be an integer between 1 and 10000, inclusive",
                              ArgumentName="partNumber", ArgumentValue=raw_number)
    number = int(raw_number)
    service = _service(request)
    upload_id = _upload_id(request)
    await service.check_upload(bucket, key, upload_id, number)  # before the body is read
    checksums: dict[str, str] = {}
    body = await service.receive(_payload(request, checksums))
    part = await service.upload_part(bucket, key, upload_id, number, body, checksums)
    return _empty(headers={"ETag": part.etag, **_checksum_headers(checksums)})


async def complete_multipart_upload(request: Request) -> Response:
    bucket, key = _labels(request)
    context = _context(request)
    _check_small_body(request, context.body)
    document = xml.parse_document(context.body, "CompleteMultipartUpload")
    requested = []
    for part in xml.children(document, "Part"):
        number, etag = xml.child_text(part, "PartNumber"), xml.child_text(part, "ETag")
        if number is None or not number.strip().isdigit() or etag is None:
            raise MalformedXML("The XML you provided was not well-formed or did not validate against our published "
                               "schema: each Part needs a PartNumber and an ETag.")
        checksums = {algorithm: value.strip() for algorithm in ALGORITHMS
                     if (value := xml.child_text(part, f"Checksum{algorithm.upper()}")) is not None}
        requested.append((int(number), etag, checksums))
    stored = await _service(request).complete_upload(bucket, key, _upload_id(request), requested)
    location = f"{request.url.scheme}://{request.headers.get('host', '')}/{quote(bucket)}/{quote(key)}"
    return _xml(xml.document("CompleteMultipartUploadResult", xml.leaf("Location", location),
                             xml.leaf("Bucket", bucket), xml.leaf("Key", key), xml.leaf("ETag", stored.etag)))


async def abort_multipart_upload(request: Request) -> Response:
    bucket, key = _labels(request)
    await _service(request).abort_upload(bucket, key, _upload_id(request))
    return _empty(204)


async def list_parts(request: Request) -> Response:
    bucket, key = _labels(request)
    upload_id = _upload_id(request)
    query = _query(request)
    parts: list[PartInfo] = await _service(request).list_parts(bucket, key, upload_id)
    raw_marker = query.get("part-number-marker", "0")
    marker = int(raw_marker) if raw_marker.isdigit() else 0
    raw_max = query.get("max-parts", "1000")
    limit = min(int(raw_max), 1000) if raw_max.isdigit() else 1000
    after = [part for part in parts if part.number > marker]
    page, truncated = after[:limit], len(after) > limit
    elements = [xml.node("Part", PartNumber=p.number, LastModified=p.last_modified, ETag=p.etag, Size=p.size,
                         **{f"Checksum{a.upper()}": v for a, v in p.checksum.items()}) for p in page]
    fields: dict[str, object] = {
        "Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumberMarker": marker,
        "NextPartNumberMarker": page[-1].number if page else marker, "MaxParts": limit, "IsTruncated": truncated,
        "StorageClass": "STANDARD",
    }
    return _xml(xml.document("ListPartsResult", *(xml.leaf(k, v) for k, v in fields.items()), *elements))

