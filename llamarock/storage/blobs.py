"""The blob store: named buckets of keyed objects, in a local folder or on any S3-compatible endpoint.

``blob_store_url`` picks the implementation: empty (or ``file:///path``) means :class:`LocalBlobStore`, one folder
per bucket under ``<data_dir>/blobs`` (or the path given); ``http(s)://host:port`` means :class:`S3BlobStore`, which
talks to that endpoint through boto3 with path-style addressing (MinIO, Ceph, moto, LocalStack, AWS itself).

Callers see two failures only: :class:`BucketMissingError` (the bucket does not exist; create it) and
:class:`BlobStoreError` (anything else: the endpoint is down, credentials are refused, the disk is full, a key the
store cannot hold). botocore and OS errors are translated into them here, once. Their messages may reach API callers
(PutModelInvocationLoggingConfiguration's bucket check), so they name the bucket and key, never a server path:
``location`` says where the store is in words a caller may see, ``where`` (with the local folder) is for the
server's own log.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llamarock.settings import Settings

# S3's rules for new bucket names; they also keep a bucket name from escaping the local store's folder.
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
BUCKET_RULES = (
    "S3 bucket names are 3 to 63 characters of lowercase letters, digits, '.' and '-', start and end with a letter "
    "or digit, have no '..' and are not an IP address, e.g. 'my-invocation-logs'"
)


def bucket_name_problem(bucket: str) -> str | None:
    """What breaks S3's bucket naming rules in ``bucket`` (see ``BUCKET_RULES``), or None when it is a valid name."""
    if not 3 <= len(bucket) <= 63:
        return f"it is {len(bucket)} characters long (3 to 63 allowed)"
    bad = sorted({c for c in bucket if not (c.isascii() and (c.islower() or c.isdigit() or c in ".-"))})
    if bad:
        return f"it contains {', '.join(map(repr, bad))} (only lowercase letters, digits, '.' and '-' are allowed)"
    if not (bucket[0].isalnum() and bucket[-1].isalnum()):
        return "it must start and end with a letter or digit"
    if ".." in bucket:
        return "it contains '..' (two periods next to each other)"
    with contextlib.suppress(ValueError):
        ipaddress.IPv4Address(bucket)
        return "it is formatted as an IP address"
    return None


class BlobStoreError(Exception):
    """The blob store could not do what was asked (unreachable, refused, out of space)."""


class BucketMissingError(BlobStoreError):
    """The named bucket does not exist in the blob store."""

    def __init__(self, bucket: str, where: str) -> None:
        super().__init__(f"bucket {bucket!r} does not exist in {where}")
        self.bucket = bucket


class BlobStore(ABC):
    """Buckets of objects. ``location`` says where the store is, for messages that tell a user what to create (no
    server path in it: API callers may see it); ``where`` says the same for the server's own log."""

    location: str
    where: str

    def create_hint(self, bucket: str) -> str:
        """How to create ``bucket``, in words an API caller may see."""
        return f"create the bucket {bucket!r} there first"

    @abstractmethod
    def bucket_exists(self, bucket: str) -> bool:
        """Whether ``bucket`` exists; raises :class:`BlobStoreError` when the store cannot be asked."""

    @abstractmethod
    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket``; creating one that exists is not an error."""

    @abstractmethod
    def put(self, bucket: str, key: str, data: bytes) -> None:
        """Write ``data`` under ``key``, replacing any object there; readers never see a partial object."""

    @abstractmethod
    def get(self, bucket: str, key: str) -> bytes:
        """The object under ``key``; :class:`BlobStoreError` when there is none."""

    @abstractmethod
    def list(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key in ``bucket`` that starts with ``prefix``, sorted."""

    def close(self) -> None:  # noqa: B027 - most stores hold nothing to release
        """Release connections."""


class LocalBlobStore(BlobStore):
    """Objects as files: ``<root>/<bucket>/<key>``. A bucket is a folder; ``mkdir`` creates one.

    A key is a path below its bucket's folder and never outside it: a key with an empty, ``.`` or ``..`` segment, a
    leading ``/``, a NUL, or one that would resolve (symbolic links followed) outside the bucket folder is refused
    with :class:`BlobStoreError`. Messages name the bucket and key, not the folder (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        from llamarock.storage.s3_objects import ObjectStore  # it builds on this module's errors

        self.root = root
        self.location = "llamarock's local blob store"
        self.where = f"the local blob store folder {root}"
        # The S3 endpoint's view of the same folder: reads see every key S3 clients wrote, including those kept
        # outside the bucket folder (docs/s3.md, "Storage layout").
        self.objects = ObjectStore(root)

    def create_hint(self, bucket: str) -> str:
        return (f"create it first: a bucket of the local blob store is a folder, mkdir <data_dir>/blobs/{bucket} (or "
                f"<folder>/{bucket} when blob_store_url is file:///<folder>)")

    def _bucket_dir(self, bucket: str) -> Path:
        if bucket_name_problem(bucket) is not None:
            raise BucketMissingError(bucket, self.location)
        return self.root / bucket

    def _path(self, bucket: str, key: str) -> Path:
        parts = key.split("/")
        if not key or "\0" in key or any(part in ("", ".", "..") for part in parts):
            raise BlobStoreError(
                f"object key {key!r} cannot be stored in bucket {bucket!r} of {self.location}: a key is '/'-separated "
                "segments, none empty, '.' or '..' (no leading or doubled '/')"
            )
        base = self._bucket_dir(bucket)
        path = base.joinpath(*parts)
        # Defence in depth: whatever the checks above miss (or a symbolic link inside the bucket folder), a key that
        # lands outside its bucket folder is refused.
        inside = os.path.normpath(path).startswith(os.path.normpath(base) + os.sep)
        if inside:
            try:
                inside = path.resolve().is_relative_to(base.resolve())
            except (OSError, RuntimeError):
                inside = False
        if not inside:
            raise BlobStoreError(f"object key {key!r} resolves outside bucket {bucket!r} of {self.location}")
        return path

    @staticmethod
    def _reason(error: OSError) -> str:
        # str(OSError) carries the file name, which is a server path: keep only the reason.
        return error.strerror or type(error).__name__

    def bucket_exists(self, bucket: str) -> bool:
        try:
            return self._bucket_dir(bucket).is_dir()
        except BucketMissingError:
            return False

    def create_bucket(self, bucket: str) -> None:
        problem = bucket_name_problem(bucket)
        if problem is not None:
            raise BlobStoreError(f"{bucket!r} is not a valid bucket name: {problem}. {BUCKET_RULES}.")
        try:
            self._bucket_dir(bucket).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise BlobStoreError(
                f"cannot create bucket {bucket!r} in {self.location}: {self._reason(error)}"
            ) from error

    def put(self, bucket: str, key: str, data: bytes) -> None:
        if not self.bucket_exists(bucket):
            raise BucketMissingError(bucket, self.location)
        path = self._path(bucket, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Written beside the target and renamed over it: a reader sees the old object or the new, never half.
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
            try:
                with os.fdopen(fd, "wb") as file:
                    file.write(data)
                    file.flush()
                    os.fsync(file.fileno())
                os.replace(temporary, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temporary)
                raise
        except OSError as error:
            raise BlobStoreError(
                f"cannot write object {key!r} in bucket {bucket!r} of {self.location}: {self._reason(error)}"
            ) from error

    def get(self, bucket: str, key: str) -> bytes:
        try:
            found = self.objects.head(bucket, key) if key and self.bucket_exists(bucket) else None
            if found is not None:
                return found.path.read_bytes()
        except OSError as error:
            raise BlobStoreError(
                f"cannot read object {key!r} in bucket {bucket!r} of {self.location}: {self._reason(error)}"
            ) from error
        path = self._path(bucket, key)
        try:
            return path.read_bytes()
        except FileNotFoundError as error:
            if not self.bucket_exists(bucket):
                raise BucketMissingError(bucket, self.location) from error
            raise BlobStoreError(f"no object {key!r} in bucket {bucket!r}") from error
        except OSError as error:
            raise BlobStoreError(
                f"cannot read object {key!r} in bucket {bucket!r} of {self.location}: {self._reason(error)}"
            ) from error

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        if not self.bucket_exists(bucket):
            raise BucketMissingError(bucket, self.location)
        try:
            return sorted(self.objects.keys(bucket, prefix))
        except OSError as error:
            raise BlobStoreError(
                f"cannot list bucket {bucket!r} of {self.location}: {self._reason(error)}"
            ) from error


class S3BlobStore(BlobStore):
    """Objects on an S3-compatible endpoint through boto3 (path-style addressing, so any host name works)."""

    def __init__(self, endpoint_url: str, *, region: str, access_key_id: str | None = None,
                 secret_access_key: str | None = None, timeout_s: float = 10.0) -> None:
        import boto3
        from botocore.config import Config

        self.location = self.where = f"the S3-compatible blob store at {endpoint_url}"
        self._region = region
        self._client: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                # The invocation-log delivery loop has its own backoff; one quick retry here is enough.
                retries={"mode": "standard", "max_attempts": 2},
            ),
        )

    def _translate(self, error: Exception, bucket: str, action: str) -> BlobStoreError:
        from botocore.exceptions import ClientError

        if isinstance(error, ClientError):
            code = str(error.response.get("Error", {}).get("Code", ""))
            # HeadBucket has no body, so a missing bucket shows only as a bare 404 there.
            if code == "NoSuchBucket" or (action == "head" and code in ("404", "NotFound")):
                return BucketMissingError(bucket, self.location)
            return BlobStoreError(f"{action} in bucket {bucket!r} on {self.location} failed: {code}: {error}")
        return BlobStoreError(f"{action} in bucket {bucket!r} on {self.location} failed: {error}")

    def _call(self, action: str, bucket: str, method: str, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self._client, method)(Bucket=bucket, **kwargs)
        except (BotoCoreError, ClientError) as error:
            raise self._translate(error, bucket, action) from error

    def bucket_exists(self, bucket: str) -> bool:
        try:
            self._call("head", bucket, "head_bucket")
        except BucketMissingError:
            return False
        return True

    def create_bucket(self, bucket: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        # S3 wants the region spelled out everywhere but us-east-1.
        extra = {} if self._region == "us-east-1" else {
            "CreateBucketConfiguration": {"LocationConstraint": self._region}
        }
        try:
            self._client.create_bucket(Bucket=bucket, **extra)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return
            raise self._translate(error, bucket, "create") from error
        except BotoCoreError as error:
            raise self._translate(error, bucket, "create") from error

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self._call("put", bucket, "put_object", Key=key, Body=data)

    def get(self, bucket: str, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError

        response = self._call("get", bucket, "get_object", Key=key)
        try:
            return bytes(response["Body"].read())
        except (BotoCoreError, OSError) as error:  # the body streams after the call: a broken connection shows here
            raise self._translate(error, bucket, "get") from error

    def list(self, bucket: str, prefix: str = "") -> list[str]:
        keys: list[str] = []
        token: str | None = None
        while True:
            extra: dict[str, Any] = {"Prefix": prefix}
            if token:
                extra["ContinuationToken"] = token
            page = self._call("list", bucket, "list_objects_v2", **extra)
            keys.extend(item["Key"] for item in page.get("Contents", []))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sorted(keys)

    def close(self) -> None:
        self._client.close()


def open_blob_store(settings: Settings) -> BlobStore:
    """The blob store ``settings.blob_store_url`` names (see the module docstring)."""
    url = settings.blob_store_url.strip()
    if not url:
        return LocalBlobStore(settings.data_dir / "blobs")
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return LocalBlobStore(Path(parsed.path))
    if parsed.scheme in ("http", "https"):
        return S3BlobStore(
            url,
            region=settings.blob_store_region or settings.region,
            access_key_id=settings.blob_store_access_key_id,
            secret_access_key=settings.blob_store_secret_access_key,
        )
    raise ValueError(f"blob_store_url {url!r}: use empty (local folder), file:///path or http(s)://host:port")

