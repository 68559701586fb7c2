"""S3 request payloads, pure: checksums (``x-amz-checksum-*``, ``Content-MD5``) and the ``aws-chunked`` framing.

``aws-chunked`` is what SDKs send for ``STREAMING-UNSIGNED-PAYLOAD-TRAILER`` (current boto3 over HTTPS: a CRC32
trailer) and ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD(-TRAILER)`` (every chunk signed, chained from the request's
signature): ``<hex size>[;chunk-signature=<sig>]\\r\\n<data>\\r\\n`` ..., a zero-size chunk, then trailer lines
``name:value\\r\\n`` (and ``x-amz-trailer-signature``) and an empty line. :class:`ChunkedDecoder` takes the body as it
arrives and gives back the data; it checks each chunk signature as its chunk ends. CRC32 is zlib's; CRC32C and
CRC64NVME are anycrc's (a C library of the catalogued CRC models: botocore itself computes them only with awscrt,
whose presence would switch every boto3 client of the process to CRT signers).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import zlib
from dataclasses import dataclass, field
from typing import Any

import anycrc

from llamarock.errors import (
    IncompleteBody,
    InvalidArgument,
    InvalidDigest,
    InvalidRequest,
    InvalidSignatureException,
)

ALGORITHMS = ("crc32", "crc32c", "crc64nvme", "sha1", "sha256")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_MAX_LINE = 4096
BAD_CHUNK = "check the signing key and the chained chunk signatures (each chunk's signs the one before it)."


class Checksum:
    """One of S3's checksum algorithms, fed incrementally; ``value()`` is the base64 S3 puts in headers."""

    def __init__(self, algorithm: str) -> None:
        self.algorithm = algorithm
        self._crc: int | None = None
        self._hash: Any = None
        self._model: Any = None
        if algorithm in ("sha1", "sha256"):
            self._hash = hashlib.new(algorithm)
        elif algorithm == "crc32c":
            self._model = anycrc.Model("CRC32-ISCSI")
        elif algorithm == "crc64nvme":
            self._model = anycrc.Model("CRC64-NVME")
        elif algorithm != "crc32":
            raise InvalidRequest(f"Checksum algorithm {algorithm!r} is not one S3 takes: {', '.join(ALGORITHMS)}.")

    def update(self, data: bytes) -> None:
        if self._hash is not None:
            self._hash.update(data)
        elif self._model is not None:
            self._crc = self._model.calc(data) if self._crc is None else self._model.calc(data, self._crc)
        else:
            self._crc = zlib.crc32(data, self._crc or 0)

    def digest(self) -> bytes:
        if self._hash is not None:
            return bytes(self._hash.digest())
        if self._model is None:
            return (self._crc or 0).to_bytes(4, "big")
        crc = self._model.calc(b"") if self._crc is None else self._crc  # nothing fed: the empty string's
        return int(crc).to_bytes(8 if self.algorithm == "crc64nvme" else 4, "big")

    def value(self) -> str:
        return base64.b64encode(self.digest()).decode()


def decode_base64_digest(value: str, size: int, name: str) -> bytes:
    """A base64 digest header (``Content-MD5``, ``x-amz-checksum-*``) of ``size`` bytes; InvalidDigest otherwise."""
    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise InvalidDigest(f"The {name} you specified is not valid.")
    return raw


DIGEST_SIZES = {"crc32": 4, "crc32c": 4, "crc64nvme": 8, "sha1": 20, "sha256": 32}


@dataclass(frozen=True)
class ChunkSigning:
    """What checks the chunk signatures of a ``STREAMING-AWS4-HMAC-SHA256-PAYLOAD`` body: the request's signing key,
    timestamp, credential scope and signature (the seed of the chain)."""

    key: bytes
    timestamp: str
    scope: str
    seed: str

    def sign(self, kind: str, previous: str, digest: str) -> str:
        lines = [f"AWS4-HMAC-SHA256-{kind}", self.timestamp, self.scope, previous]
        if kind == "PAYLOAD":
            lines.append(EMPTY_SHA256)
        lines.append(digest)
        return hmac.new(self.key, "\n".join(lines).encode(), hashlib.sha256).hexdigest()


@dataclass
class ChunkedDecoder:
    """Decodes an ``aws-chunked`` body as it arrives; ``signing`` when its chunks (and trailer) are signed."""

    signing: ChunkSigning | None = None
    trailers: dict[str, str] = field(default_factory=dict)
    done: bool = False
    _buffer: bytearray = field(default_factory=bytearray)
    _remaining: int = -1  # data bytes left in the current chunk; -1 while reading a chunk's header line
    _crlf: bool = False  # the CRLF after a chunk's data is due
    _in_trailer: bool = False
    _claimed: str = ""
    _previous: str = ""
    _hash: Any = None
    _trailer_lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._previous = self.signing.seed if self.signing is not None else ""

    def feed(self, data: bytes) -> bytes:
        """The payload bytes in ``data`` (framing removed)."""
        if self.done:
            if data:
                raise IncompleteBody("The aws-chunked body goes on after its final chunk.")
            return b""
        self._buffer.extend(data)
        out = bytearray()
        while self._buffer and not self.done:
            if self._remaining > 0:
                piece = bytes(self._buffer[: self._remaining])
                del self._buffer[: len(piece)]
                self._remaining -= len(piece)
                if self._hash is not None:
                    self._hash.update(piece)
                out.extend(piece)
                if self._remaining == 0:
                    self._end_chunk()
                continue
            line = self._line()
            if line is None:
                break
            if self._crlf:
                if line:
                    raise IncompleteBody("An aws-chunked chunk is longer than its declared size.")
                self._crlf = False
            elif self._in_trailer:
                self._trailer_line(line)
            else:
                self._header(line)
        return bytes(out)

    def finish(self) -> dict[str, str]:
        """The trailers, once the body has ended; IncompleteBody when it ended early."""
        if not self.done:
            raise IncompleteBody("The aws-chunked body ended before its final chunk and trailer.")
        return self.trailers

    def _line(self) -> str | None:
        end = self._buffer.find(b"\r\n")
        if end < 0:
            if len(self._buffer) > _MAX_LINE:
                raise IncompleteBody("An aws-chunked header or trailer line is too long.")
            return None
        line = bytes(self._buffer[:end]).decode("latin-1")
        del self._buffer[: end + 2]
        return line

    def _header(self, line: str) -> None:
        size_text, _, extension = line.partition(";")
        try:
            size = int(size_text.strip(), 16)
        except ValueError:
            raise IncompleteBody(f"An aws-chunked chunk header is malformed: {line[:64]!r}.") from None
        if size < 0:
            raise IncompleteBody("An aws-chunked chunk has a negative size.")
        self._claimed = ""
        if self.signing is not None:
            name, _, value = extension.partition("=")
            if name.strip() != "chunk-signature" or not value:
                raise IncompleteBody("A signed aws-chunked chunk carries no chunk-signature.")
            self._claimed = value.strip()
        self._hash = hashlib.sha256() if self.signing is not None else None
        if size == 0:  # the final chunk: trailer lines (perhaps none) and an empty line follow
            self._verify_chunk()
            self._in_trailer = True
            return
        self._remaining = size

    def _end_chunk(self) -> None:
        self._remaining = -1
        self._verify_chunk()
        self._crlf = True

    def _verify_chunk(self) -> None:
        if self.signing is not None and self._hash is not None:
            expected = self.signing.sign("PAYLOAD", self._previous, self._hash.hexdigest())
            if not hmac.compare_digest(expected, self._claimed):
                raise InvalidSignatureException(
                    f"The chunk signature of an aws-chunked chunk does not match: {BAD_CHUNK}"
                )
            self._previous = expected
        self._hash = None

    def _trailer_line(self, line: str) -> None:
        if line == "":
            if self.signing is not None and self._trailer_lines:
                claimed = self.trailers.pop("x-amz-trailer-signature", None)
                canonical = "".join(f"{entry}\n" for entry in self._trailer_lines)
                expected = self.signing.sign("TRAILER", self._previous,
                                             hashlib.sha256(canonical.encode()).hexdigest())
                if claimed is None or not hmac.compare_digest(expected, claimed):
                    raise InvalidSignatureException(
                        f"The trailer signature of the aws-chunked body does not match: {BAD_CHUNK}"
                    )
            self.done = True
            return
        name, sep, value = line.partition(":")
        if not sep:
            raise IncompleteBody(f"An aws-chunked trailer line is malformed: {line[:64]!r}.")
        name = name.strip().lower()
        self.trailers[name] = value.strip()
        if name != "x-amz-trailer-signature":
            self._trailer_lines.append(f"{name}:{value.strip()}")


def check_length(value: str | None, name: str) -> int | None:
    """A non-negative integer header (``Content-Length``, ``x-amz-decoded-content-length``), or None when absent."""
    if value is None:
        return None
    if not value.strip().isdigit():
        raise InvalidArgument(f"{name} must be a non-negative integer, not {value[:32]!r}.")
    return int(value)
