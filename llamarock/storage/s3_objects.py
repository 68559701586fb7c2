"""The local blob store as S3 sees it: objects with metadata, written atomically, and multipart uploads.

Objects are the local blob store's files, ``<root>/<bucket>/<key>``, so that everything else reading the blob store
(:class:`~llamarock.storage.blobs.LocalBlobStore`, knowledge-base data sources) sees what S3 clients wrote. Whatever
S3 knows beyond the bytes lives under ``<root>/.s3/``, which no bucket can collide with (bucket names cannot start
with a dot):

* ``meta/<bucket>/<hh>/<sha256(key)>.json``: the key, ETag, size, Content-Type, user metadata, the other stored
  headers, the checksum given at upload, last-modified, and the size and mtime of the data file it describes. A data
  file replaced by someone else (another writer of the blob folder) no longer matches: its ETag is computed again
  and the rest is forgotten. A file with no sidecar (put there by hand) is an object too.
* ``hashed/<bucket>/<sha256(key)>``: the data of keys that cannot be a path below the bucket folder: an empty,
  ``.`` or ``..`` segment (``a//b``, ``folder/``, ``a/../b``), a segment over 255 bytes, or a key whose path is a
  folder of other keys (``a`` beside ``a/b``) or lies under a file (``a/b`` beside ``a``). No key ever names a
  path outside its bucket folder.
* ``uploads/<upload id>/``: the parts of multipart uploads in progress; ``tmp/``: bodies being received.
* ``buckets/<bucket>.json``: the bucket's creation date.

Writes go to ``tmp/`` first, are flushed to disk and then renamed into place, so a crash leaves the old object or
the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from llamarock.storage.blobs import BlobStoreError, BucketMissingError

HIDDEN = ".s3"
UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_TMP_MAX_AGE_S = 86400


class BucketNotEmptyError(BlobStoreError):
    """The bucket still holds objects."""


@dataclass
class ObjectInfo:
    """One object: its key, data file and what S3 says about it."""

    key: str
    path: Path
    size: int
    etag: str  # with its quotes, as on the wire
    last_modified: datetime
    content_type: str = "binary/octet-stream"
    metadata: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)  # Content-Encoding, Cache-Control, ...
    checksum: dict[str, str] = field(default_factory=dict)  # algorithm -> base64 value given at upload
    parts: int = 0  # parts of a multipart object (its ETag ends in -N)


@dataclass
class PartInfo:
    number: int
    size: int
    etag: str
    last_modified: datetime
    checksum: dict[str, str] = field(default_factory=dict)


class Incoming:
    """A body being received into ``tmp/``: written as it arrives, hashed (MD5, for the ETag) on the way."""

    def __init__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=folder, suffix=".part")
        self.path = Path(name)
        self.file: IO[bytes] = os.fdopen(fd, "wb")
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.size = 0

    def write(self, data: bytes) -> None:
        self.file.write(data)
        self.md5.update(data)
        self.size += len(data)

    def finish(self) -> None:
        """Flush to disk (call in a thread: fsync blocks)."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
        with contextlib.suppress(OSError):
            self.path.unlink()


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


class ObjectStore:
    """S3's view of the local blob store folder ``root`` (see the module docstring). Methods block: call them in a
    thread. One lock orders the renames that commit objects; bodies are received outside it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hidden = root / HIDDEN
        self._lock = threading.RLock()
        tmp = self.hidden / "tmp"
        if tmp.is_dir():  # bodies a crash left half-received
            cutoff = time.time() - _TMP_MAX_AGE_S
            for stale in tmp.iterdir():
                with contextlib.suppress(OSError):
                    if stale.stat().st_mtime < cutoff:
                        stale.unlink()

    # ------------------------------------------------------------------------------------------------ buckets

    def bucket_exists(self, bucket: str) -> bool:
        return not bucket.startswith(".") and "/" not in bucket and (self.root / bucket).is_dir()

    def _require(self, bucket: str) -> Path:
        if not self.bucket_exists(bucket):
            raise BucketMissingError(bucket, "llamarock's local blob store")
        return self.root / bucket

    def list_buckets(self) -> list[tuple[str, datetime]]:
        if not self.root.is_dir():
            return []
        found = []
        for entry in sorted(self.root.iterdir()):
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            found.append((entry.name, self._created(entry.name)))
        return found

    def _created(self, bucket: str) -> datetime:
        try:
            stamp = json.loads((self.hidden / "buckets" / f"{bucket}.json").read_text())["created"]
            return datetime.fromisoformat(stamp)
        except (OSError, ValueError, KeyError, TypeError):
            with contextlib.suppress(OSError):
                return datetime.fromtimestamp((self.root / bucket).stat().st_mtime, UTC)
            return _now()

    def create_bucket(self, bucket: str) -> bool:
        """Create ``bucket``; False when it exists already."""
        with self._lock:
            path = self.root / bucket
            if path.is_dir():
                return False
            path.mkdir(parents=True)
            self._write_json(self.hidden / "buckets" / f"{bucket}.json", {"created": _now().isoformat()})
            return True

    def delete_bucket(self, bucket: str) -> None:
        with self._lock:
            path = self._require(bucket)
            if next(iter(self.keys(bucket)), None) is not None:
                raise BucketNotEmptyError(f"bucket {bucket!r} is not empty")
            shutil.rmtree(path)
            for leftover in (self.hidden / "meta" / bucket, self.hidden / "hashed" / bucket):
                shutil.rmtree(leftover, ignore_errors=True)
            with contextlib.suppress(OSError):
                (self.hidden / "buckets" / f"{bucket}.json").unlink()
            for upload in self._uploads_of(bucket):
                shutil.rmtree(upload, ignore_errors=True)

    # ------------------------------------------------------------------------------------------------ objects

    def _meta_path(self, bucket: str, key: str) -> Path:
        digest = _digest(key)
        return self.hidden / "meta" / bucket / digest[:2] / f"{digest}.json"

    def _hashed_path(self, bucket: str, key: str) -> Path:
        return self.hidden / "hashed" / bucket / _digest(key)

    def _direct_path(self, bucket: str, key: str) -> Path | None:
        """The path of ``key`` below its bucket folder, or None when the key cannot be one (see the docstring)."""
        parts = key.split("/")
        if "\0" in key or any(p in ("", ".", "..") or len(p.encode("utf-8", "surrogatepass")) > 255 for p in parts):
            return None
        base = self.root / bucket
        path = base.joinpath(*parts)
        if not os.path.normpath(path).startswith(os.path.normpath(base) + os.sep):
            return None
        return path

    def _inside(self, bucket: str, path: Path) -> bool:
        """Whether ``path`` resolves (symbolic links followed) inside the bucket folder or ``.s3``."""
        try:
            resolved = path.resolve()
            return resolved.is_relative_to((self.root / bucket).resolve()) or resolved.is_relative_to(
                self.hidden.resolve())
        except (OSError, RuntimeError):
            return False

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        """The object under ``key``, or None; BucketMissingError when the bucket does not exist."""
        self._require(bucket)
        meta = self._read_json(self._meta_path(bucket, key))
        candidates = []
        if meta is not None and meta.get("key") == key and meta.get("hashed"):
            candidates.append(self._hashed_path(bucket, key))
        direct = self._direct_path(bucket, key)
        if direct is not None:
            candidates.append(direct)
        for path in candidates:
            try:
                stat = path.stat()
            except OSError:
                continue
            if not path.is_file() or not self._inside(bucket, path):
                continue
            fresh = meta is not None and meta.get("key") == key and meta.get("size") == stat.st_size \
                and meta.get("mtime_ns") == stat.st_mtime_ns
            if fresh:
                assert meta is not None
                return ObjectInfo(key, path, stat.st_size, meta["etag"],
                                  datetime.fromisoformat(meta["last_modified"]), meta.get("content_type") or
                                  "binary/octet-stream", dict(meta.get("metadata") or {}),
                                  dict(meta.get("headers") or {}), dict(meta.get("checksum") or {}),
                                  int(meta.get("parts") or 0))
            return self._adopt(bucket, key, path, stat)
        return None

    def _adopt(self, bucket: str, key: str, path: Path, stat: os.stat_result) -> ObjectInfo:
        """An object whose data no sidecar describes (written by someone else): its ETag from its bytes."""
        md5 = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as file:
            for block in iter(lambda: file.read(1 << 20), b""):
                md5.update(block)
        info = ObjectInfo(key, path, stat.st_size, f'"{md5.hexdigest()}"',
                          datetime.fromtimestamp(stat.st_mtime, UTC).replace(microsecond=0))
        with contextlib.suppress(OSError):
            self._write_meta(bucket, info, stat, hashed=path != self._direct_path(bucket, key))
        return info

    def incoming(self) -> Incoming:
        """A new body to receive into ``tmp/``."""
        return Incoming(self.hidden / "tmp")

    def commit(self, bucket: str, key: str, body: Incoming, info: ObjectInfo) -> ObjectInfo:
        """Make a received (and finished) body the object under ``key``, with ``info``'s metadata."""
        with self._lock:
            self._require(bucket)
            old = self.head(bucket, key)
            direct = self._direct_path(bucket, key)
            target = direct if direct is not None and self._fits(bucket, direct) else self._hashed_path(bucket, key)
            target.parent.mkdir(parents=True, exist_ok=True)
            stat = body.path.stat()
            info.key, info.path, info.size = key, target, stat.st_size
            info.last_modified = _now()
            # The sidecar first, naming the new file's size and mtime (kept by the rename): a crash between the two
            # leaves the old data, which the sidecar no longer matches, so its ETag is computed again.
            self._write_meta(bucket, info, stat, hashed=target != direct)
            os.replace(body.path, target)
            if old is not None and old.path != target:
                self._remove(bucket, old.path)
            return info

    def _fits(self, bucket: str, path: Path) -> bool:
        """Whether ``path`` can be a file: it is not a folder, nothing above it (in the bucket) is a file, and nothing
        on the way is a symbolic link (which could lead out of the bucket folder)."""
        if path.is_dir() or path.is_symlink():
            return False
        base = self.root / bucket
        parent = path.parent
        while parent != base:
            if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
                return False
            parent = parent.parent
        return True

    def delete(self, bucket: str, key: str) -> None:
        """Remove ``key`` (nothing happens when there is none, as on S3)."""
        with self._lock:
            info = self.head(bucket, key)
            if info is not None:
                self._remove(bucket, info.path)
            with contextlib.suppress(OSError):
                self._meta_path(bucket, key).unlink()

    def _remove(self, bucket: str, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        base = self.root / bucket
        parent = path.parent
        while parent != base and parent.is_relative_to(base):  # S3 has no folders: drop the ones left empty
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key of ``bucket`` that starts with ``prefix``, in S3's order (UTF-8 bytes)."""
        base = self._require(bucket)
        found: set[str] = set()
        start = base
        directory = prefix.rpartition("/")[0]
        direct = self._direct_path(bucket, directory) if directory else None
        if direct is not None:
            # (never through a symbolic link: it could lead out of the bucket folder)
            links = [p for p in (direct, *direct.parents) if p.is_relative_to(base) and p != base and p.is_symlink()]
            start = direct if not links else base
        if start.is_dir():
            for path in _files(start):
                if path.name.startswith(".") and path.name.endswith(".part"):
                    continue  # a LocalBlobStore write in progress
                key = path.relative_to(base).as_posix()
                if key.startswith(prefix):
                    found.add(key)
        hashed = self.hidden / "hashed" / bucket
        if hashed.is_dir():
            for path in hashed.iterdir():
                meta = self._read_json(self.hidden / "meta" / bucket / path.name[:2] / f"{path.name}.json")
                hashed_key = meta.get("key") if meta is not None else None
                if isinstance(hashed_key, str) and hashed_key.startswith(prefix) and meta is not None \
                        and meta.get("hashed"):
                    found.add(hashed_key)
        return sorted(found, key=lambda k: k.encode("utf-8", "surrogatepass"))

    # ------------------------------------------------------------------------------------------------ multipart

    def _upload_dir(self, upload_id: str) -> Path | None:
        if not UPLOAD_ID.match(upload_id):
            return None
        path = self.hidden / "uploads" / upload_id
        return path if path.is_dir() else None

    def _uploads_of(self, bucket: str) -> Iterator[Path]:
        uploads = self.hidden / "uploads"
        if uploads.is_dir():
            for path in uploads.iterdir():
                meta = self._read_json(path / "upload.json")
                if meta is not None and meta.get("bucket") == bucket:
                    yield path

    def create_upload(self, bucket: str, key: str, info: ObjectInfo) -> str:
        self._require(bucket)
        upload_id = uuid.uuid4().hex
        path = self.hidden / "uploads" / upload_id
        path.mkdir(parents=True)
        self._write_json(path / "upload.json", {
            "bucket": bucket, "key": key, "content_type": info.content_type, "metadata": info.metadata,
            "headers": info.headers, "checksum": info.checksum, "initiated": _now().isoformat(),
        })
        return upload_id

    def upload(self, bucket: str, key: str, upload_id: str) -> dict[str, Any] | None:
        """The upload ``upload_id`` of ``key`` (its stored fields), or None when there is none."""
        path = self._upload_dir(upload_id)
        meta = self._read_json(path / "upload.json") if path is not None else None
        if meta is None or meta.get("bucket") != bucket or meta.get("key") != key:
            return None
        return meta

    def commit_part(self, upload_id: str, number: int, body: Incoming, checksum: dict[str, str]) -> PartInfo:
        path = self._upload_dir(upload_id)
        if path is None:
            raise BlobStoreError(f"no upload {upload_id!r}")
        part = PartInfo(number, body.size, f'"{body.md5.hexdigest()}"', _now(), checksum)
        self._write_json(path / f"part-{number:05d}.json", {
            "size": part.size, "etag": part.etag, "last_modified": part.last_modified.isoformat(),
            "checksum": checksum,
        })
        os.replace(body.path, path / f"part-{number:05d}")
        return part

    def parts(self, upload_id: str) -> list[PartInfo]:
        path = self._upload_dir(upload_id)
        if path is None:
            return []
        found = []
        for meta_path in sorted(path.glob("part-*.json")):
            meta = self._read_json(meta_path)
            data = meta_path.with_suffix("")
            if meta is None or not data.is_file() or data.stat().st_size != meta.get("size"):
                continue
            found.append(PartInfo(int(data.name[5:]), meta["size"], meta["etag"],
                                  datetime.fromisoformat(meta["last_modified"]), dict(meta.get("checksum") or {})))
        return found

    def assemble(self, upload_id: str, numbers: list[int]) -> Incoming:
        """The parts ``numbers``, in that order, concatenated into one received (finished) body."""
        path = self._upload_dir(upload_id)
        if path is None:
            raise BlobStoreError(f"no upload {upload_id!r}")
        body = self.incoming()
        try:
            for number in numbers:
                with (path / f"part-{number:05d}").open("rb") as part:
                    for block in iter(lambda: part.read(1 << 20), b""):
                        body.write(block)
            body.finish()
        except BaseException:
            body.discard()
            raise
        return body

    def abort(self, upload_id: str) -> bool:
        path = self._upload_dir(upload_id)
        if path is None:
            return False
        shutil.rmtree(path, ignore_errors=True)
        return True

    # ------------------------------------------------------------------------------------------------ files

    def _write_meta(self, bucket: str, info: ObjectInfo, stat: os.stat_result, *, hashed: bool) -> None:
        self._write_json(self._meta_path(bucket, info.key), {
            "key": info.key, "hashed": hashed, "etag": info.etag, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            "last_modified": info.last_modified.isoformat(), "content_type": info.content_type,
            "metadata": info.metadata, "headers": info.headers, "checksum": info.checksum, "parts": info.parts,
        })

    @staticmethod
    def _read_json(path: Path) -> dict[str, Any] | None:
        try:
            value = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return value if isinstance(value, dict) else None

    @staticmethod
    def _write_json(path: Path, value: dict[str, Any]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as file:
                json.dump(value, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise


def _files(folder: Path) -> Iterator[Path]:
    """Every regular file below ``folder`` (symbolic links not followed into folders)."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            yield from _files(Path(entry.path))
        elif entry.is_file():
            yield Path(entry.path)
