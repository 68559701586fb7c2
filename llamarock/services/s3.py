"""The S3 endpoint's use cases on the local blob store: buckets, objects, listings, copies, multipart uploads.

The route (``routes/s3.py``) turns HTTP into calls here and S3 errors into XML; this layer applies S3's rules
(bucket names, key length, part sizes, the multipart ETag, listing order and pagination) over
:class:`~llamarock.storage.s3_objects.ObjectStore`, whose blocking calls run in threads. When ``blob_store_url``
names an S3-compatible endpoint, every call here is refused: that store is the one to use.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llamarock.errors import (
    BucketAlreadyOwnedByYou,
    BucketNotEmpty,
    EntityTooLarge,
    EntityTooSmall,
    InternalServerException,
    InvalidArgument,
    InvalidBucketName,
    InvalidPart,
    InvalidPartOrder,
    InvalidRequest,
    KeyTooLongError,
    NoSuchBucket,
    NoSuchKey,
    NoSuchUpload,
    S3NotImplemented,
)
from llamarock.settings import Settings
from llamarock.storage.blobs import BlobStoreError, BucketMissingError, bucket_name_problem
from llamarock.storage.s3_objects import BucketNotEmptyError, Incoming, ObjectInfo, ObjectStore, PartInfo

__all__ = ["Incoming", "Listing", "ObjectInfo", "PartInfo", "S3Service"]  # the route's vocabulary

MAX_OBJECT_BYTES = 5 * 1024**3  # S3's most in one PutObject or UploadPart
MIN_PART_BYTES = 5 * 1024**2  # every part but the last
MAX_PARTS = 10_000
MAX_KEY_BYTES = 1024
MAX_KEYS = 1000


@dataclass
class Listing:
    """One page of a bucket listing."""

    contents: list[ObjectInfo] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    last: str = ""  # the last key or common prefix of the page (where the next page starts after)


def check_key(key: str) -> None:
    if not key:
        raise InvalidArgument("An object key must not be empty.")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise KeyTooLongError(f"Your key is too long: keys are at most {MAX_KEY_BYTES} bytes of UTF-8.")


def multipart_etag(parts: list[PartInfo]) -> str:
    """S3's ETag of a multipart object: the MD5 of the parts' binary MD5s, then ``-<number of parts>``."""
    digest = hashlib.md5(b"".join(bytes.fromhex(p.etag.strip('"')) for p in parts), usedforsecurity=False)
    return f'"{digest.hexdigest()}-{len(parts)}"'


def encode_token(last: str) -> str:
    return base64.urlsafe_b64encode(json.dumps({"after": last}).encode()).decode()


def decode_token(token: str) -> str:
    try:
        value = json.loads(base64.urlsafe_b64decode(token.encode()))["after"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise InvalidArgument("The continuation token provided is incorrect.", ArgumentName="continuation-token") \
            from None
    if not isinstance(value, str):
        raise InvalidArgument("The continuation token provided is incorrect.", ArgumentName="continuation-token")
    return value


class S3Service:
    """S3 over the local blob store (see the module docstring)."""

    def __init__(self, settings: Settings) -> None:
        url = settings.blob_store_url.strip()
        parsed = urlparse(url)
        self.off: str | None = None
        root = settings.data_dir / "blobs"
        if parsed.scheme in ("http", "https"):
            self.off = (
                f"This server's S3 endpoint is off: blob_store_url names the S3-compatible store {url}, which every "
                "llamarock feature uses. Send S3 requests to that store."
            )
        elif parsed.scheme == "file":
            root = Path(parsed.path)
        self.region = settings.region
        self.store = ObjectStore(root)

    async def _run(self, function: Callable[..., Any], *args: Any) -> Any:
        if self.off is not None:
            raise S3NotImplemented(self.off)
        try:
            return await asyncio.to_thread(function, *args)
        except BucketMissingError as error:
            raise NoSuchBucket("The specified bucket does not exist", BucketName=error.bucket) from None
        except BucketNotEmptyError:
            raise BucketNotEmpty("The bucket you tried to delete is not empty") from None
        except (BlobStoreError, OSError) as error:
            raise InternalServerException(f"The local blob store failed: {_reason(error)}") from error

    def check_enabled(self) -> None:
        if self.off is not None:
            raise S3NotImplemented(self.off)

    # ------------------------------------------------------------------------------------------------ buckets

    async def list_buckets(self) -> list[tuple[str, datetime]]:
        found: list[tuple[str, datetime]] = await self._run(self.store.list_buckets)
        return found

    async def create_bucket(self, bucket: str) -> None:
        problem = bucket_name_problem(bucket)
        if problem is not None:
            raise InvalidBucketName(f"The specified bucket is not valid: {problem}.", BucketName=bucket)
        if not await self._run(self.store.create_bucket, bucket):
            raise BucketAlreadyOwnedByYou(
                "Your previous request to create the named bucket succeeded and you already own it.",
                BucketName=bucket,
            )

    async def head_bucket(self, bucket: str) -> None:
        if not await self._run(self.store.bucket_exists, bucket):
            raise NoSuchBucket("The specified bucket does not exist", BucketName=bucket)

    async def delete_bucket(self, bucket: str) -> None:
        await self._run(self.store.delete_bucket, bucket)

    # ------------------------------------------------------------------------------------------------ objects

    async def head_object(self, bucket: str, key: str) -> ObjectInfo:
        check_key(key)
        info: ObjectInfo | None = await self._run(self.store.head, bucket, key)
        if info is None:
            raise NoSuchKey("The specified key does not exist.", Key=key)
        return info

    async def receive(self, chunks: AsyncIterator[bytes], limit: int = MAX_OBJECT_BYTES) -> Incoming:
        """A body received into the store's ``tmp/`` (finished: on disk), EntityTooLarge past ``limit``. The
        iterator raises when the body fails its checks; the partial file is then removed."""
        body: Incoming = await self._run(self.store.incoming)
        try:
            async for chunk in chunks:
                if body.size + len(chunk) > limit:
                    raise EntityTooLarge(
                        f"Your proposed upload exceeds the maximum allowed size of {limit} bytes.",
                        MaxSizeAllowed=limit,
                    )
                body.write(chunk)
            await asyncio.to_thread(body.finish)
        except OSError as error:  # the disk is full, or the folder went away: S3's InternalError, no server path
            await asyncio.to_thread(body.discard)
            raise InternalServerException(f"The local blob store could not store the body: {_reason(error)}") \
                from error
        except BaseException:
            await asyncio.to_thread(body.discard)
            raise
        return body

    async def put_object(self, bucket: str, key: str, body: Incoming, info: ObjectInfo) -> ObjectInfo:
        """Make a received body the object ``key``; ``info`` carries its metadata."""
        check_key(key)
        info.etag = f'"{body.md5.hexdigest()}"'
        try:
            committed: ObjectInfo = await self._run(self.store.commit, bucket, key, body, info)
        except BaseException:
            await asyncio.to_thread(body.discard)
            raise
        return committed

    async def delete_object(self, bucket: str, key: str) -> None:
        check_key(key)
        await self._run(self.store.delete, bucket, key)

    async def copy_object(self, source: ObjectInfo, bucket: str, key: str, info: ObjectInfo | None) -> ObjectInfo:
        """Copy ``source`` to ``key``: with its metadata (``info`` None) or with ``info``'s (REPLACE)."""
        check_key(key)

        def copy() -> Incoming:
            body = self.store.incoming()
            try:
                with source.path.open("rb") as file:
                    for block in iter(lambda: file.read(1 << 20), b""):
                        body.write(block)
                body.finish()
            except BaseException:
                body.discard()
                raise
            return body

        body: Incoming = await self._run(copy)
        if info is None:
            info = ObjectInfo(key, source.path, source.size, source.etag, source.last_modified, source.content_type,
                              dict(source.metadata), dict(source.headers), dict(source.checksum))
        return await self.put_object(bucket, key, body, info)

    async def list_objects(self, bucket: str, *, prefix: str, delimiter: str, max_keys: int, after: str) -> Listing:
        """One page of ``bucket``'s keys under ``prefix`` after ``after`` (a key, or a common prefix: then nothing
        under it), keys with ``delimiter`` past the prefix rolled up into common prefixes."""
        listing: Listing = await self._run(self._list, bucket, prefix, delimiter, max_keys, after)
        return listing

    def _list(self, bucket: str, prefix: str, delimiter: str, max_keys: int, after: str) -> Listing:
        """:meth:`list_objects`, in one thread."""
        keys = self.store.keys(bucket, prefix)
        listing = Listing()
        skip_under = after if delimiter and after.endswith(delimiter) and after.startswith(prefix) else None
        after_bytes = after.encode("utf-8", "surrogatepass")
        count = 0
        for key in keys:
            if after and key.encode("utf-8", "surrogatepass") <= after_bytes:
                continue
            if skip_under is not None and key.startswith(skip_under):
                continue
            entry: str | ObjectInfo
            if delimiter and delimiter in key[len(prefix):]:
                common = key[: len(prefix) + key[len(prefix):].index(delimiter) + len(delimiter)]
                if listing.prefixes and listing.prefixes[-1] == common:
                    continue
                entry = common
            else:
                found = self.store.head(bucket, key)
                if found is None:  # deleted meanwhile
                    continue
                entry = found
            if count == max_keys:
                listing.truncated = True
                break
            if isinstance(entry, str):
                listing.prefixes.append(entry)
                listing.last = entry
            else:
                listing.contents.append(entry)
                listing.last = entry.key
            count += 1
        return listing

    # ------------------------------------------------------------------------------------------------ multipart

    async def create_upload(self, bucket: str, key: str, info: ObjectInfo) -> str:
        check_key(key)
        upload_id: str = await self._run(self.store.create_upload, bucket, key, info)
        return upload_id

    async def _upload(self, bucket: str, key: str, upload_id: str) -> dict[str, Any]:
        await self.head_bucket(bucket)
        found: dict[str, Any] | None = await self._run(self.store.upload, bucket, key, upload_id)
        if found is None:
            raise NoSuchUpload(
                "The specified upload does not exist. The upload ID may be invalid, or the upload may have been "
                "aborted or completed.", UploadId=upload_id,
            )
        return found

    async def check_upload(self, bucket: str, key: str, upload_id: str, number: int | None = None) -> None:
        """NoSuchUpload (or NoSuchBucket) before a part's body is read; InvalidArgument for a bad part number."""
        await self._upload(bucket, key, upload_id)
        if number is not None and not 1 <= number <= MAX_PARTS:
            raise InvalidArgument(f"Part number must be an integer between 1 and {MAX_PARTS}, inclusive",
                                  ArgumentName="partNumber", ArgumentValue=number)

    async def upload_part(self, bucket: str, key: str, upload_id: str, number: int, body: Incoming,
                          checksum: dict[str, str]) -> PartInfo:
        try:
            await self.check_upload(bucket, key, upload_id, number)
            part: PartInfo = await self._run(self.store.commit_part, upload_id, number, body, checksum)
        except BaseException:
            await asyncio.to_thread(body.discard)
            raise
        return part

    async def list_parts(self, bucket: str, key: str, upload_id: str) -> list[PartInfo]:
        await self._upload(bucket, key, upload_id)
        parts: list[PartInfo] = await self._run(self.store.parts, upload_id)
        return parts

    async def complete_upload(self, bucket: str, key: str, upload_id: str,
                              requested: list[tuple[int, str, dict[str, str]]]) -> ObjectInfo:
        """Assemble the parts ``requested`` (number, ETag, checksums) into the object, with S3's checks."""
        upload = await self._upload(bucket, key, upload_id)
        if not requested:
            raise InvalidRequest("You must specify at least one part")
        numbers = [number for number, _, _ in requested]
        if numbers != sorted(set(numbers)):
            raise InvalidPartOrder("The list of parts was not in ascending order. Parts must be ordered by part "
                                   "number.", UploadId=upload_id)
        stored = {part.number: part for part in await self.list_parts(bucket, key, upload_id)}
        chosen = []
        for index, (number, etag, checksums) in enumerate(requested):
            part = stored.get(number)
            if part is None or part.etag.strip('"') != etag.strip().strip('"') or any(
                part.checksum.get(algorithm) not in (None, value) for algorithm, value in checksums.items()
            ):
                raise InvalidPart(
                    "One or more of the specified parts could not be found. The part may not have been uploaded, or "
                    "the specified entity tag may not match the part's entity tag.",
                    UploadId=upload_id, PartNumber=number, ETag=etag,
                )
            if part.size < MIN_PART_BYTES and index < len(requested) - 1:
                raise EntityTooSmall("Your proposed upload is smaller than the minimum allowed object size.",
                                     ProposedSize=part.size, MinSizeAllowed=MIN_PART_BYTES, PartNumber=number,
                                     ETag=part.etag)
            chosen.append(part)
        body: Incoming = await self._run(self.store.assemble, upload_id, numbers)
        info = ObjectInfo(key, body.path, body.size, multipart_etag(chosen), datetime.now().astimezone(),
                          upload.get("content_type") or "binary/octet-stream", dict(upload.get("metadata") or {}),
                          dict(upload.get("headers") or {}), {}, len(chosen))
        try:
            committed: ObjectInfo = await self._run(self.store.commit, bucket, key, body, info)
        except BaseException:
            await asyncio.to_thread(body.discard)
            raise
        await self._run(self.store.abort, upload_id)
        return committed

    async def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        await self._upload(bucket, key, upload_id)
        await self._run(self.store.abort, upload_id)


def _reason(error: Exception) -> str:
    if isinstance(error, OSError):
        return error.strerror or type(error).__name__  # never the server path str(OSError) carries
    return str(error)

