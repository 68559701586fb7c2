"""Converse ``document`` blocks reduced to prompt text.

Bedrock embeds a document's extracted text in the Llama prompt; so do we: :func:`document_text` extracts the text of
a txt, md, csv, html or pdf document (Bedrock also accepts doc, docx, xls and xlsx, which this server refuses with a
message saying how to convert them), :func:`render_document` wraps it for the user turn, and
:func:`check_document_name` applies Bedrock's rule for document names. Every failure is a ValidationException in
Bedrock's words where Bedrock has words for it. Pure: no I/O.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Sequence

import bs4
import pypdf

from llamarock.errors import ValidationException

MAX_DOCUMENTS = 5
MAX_DOCUMENT_BYTES = 4_500_000
MAX_DOCUMENT_NAME_LENGTH = 200
SUPPORTED_FORMATS = ("txt", "md", "html", "csv", "pdf")
# Valid Bedrock formats that this server cannot read yet.
CONVERTIBLE_FORMATS = ("doc", "docx", "xls", "xlsx")

DOCUMENT_NAME_MESSAGE = (
    "The document file name can only contain alphanumeric characters, whitespace characters, hyphens, parentheses, "
    "and square brackets. The name can't contain more than one consecutive whitespace character. Check that the file "
    "name conforms to these restrictions and retry your request."
)
TOO_MANY_DOCUMENTS_MESSAGE = f"You can't include more than {MAX_DOCUMENTS} documents in a request."
DUPLICATE_DOCUMENT_NAMES_MESSAGE = "Messages can't contain duplicate document names."

# Bedrock accepts ASCII letters and digits, underscores (observed, though its message does not list them), single
# spaces, hyphens, parentheses and square brackets; tabs, non-ASCII letters and two spaces in a row are refused.
_NAME = re.compile(r"[A-Za-z0-9_\-()\[\] ]+")
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_INVISIBLE_TAGS = ["script", "style", "noscript", "template"]


def check_document_name(name: str) -> None:
    """Raise ValidationException unless ``name`` follows Bedrock's document name rule."""
    if not 1 <= len(name) <= MAX_DOCUMENT_NAME_LENGTH or not _NAME.fullmatch(name) or "  " in name:
        raise ValidationException(DOCUMENT_NAME_MESSAGE)


def check_document_names(names: Sequence[str]) -> None:
    """Raise ValidationException unless a request's document ``names`` are few enough, distinct and well formed."""
    if len(names) > MAX_DOCUMENTS:
        raise ValidationException(TOO_MANY_DOCUMENTS_MESSAGE)
    if len(set(names)) != len(names):
        raise ValidationException(DUPLICATE_DOCUMENT_NAMES_MESSAGE)
    for name in names:
        check_document_name(name)


def document_text(fmt: str, name: str, data: bytes) -> str:
    """The text of the document ``name`` of format ``fmt`` whose bytes are ``data``."""
    if fmt in CONVERTIBLE_FORMATS:
        raise ValidationException(
            f"The document format {fmt} is not supported by this server yet. "
            "Convert the document to pdf, html, txt, md or csv."
        )
    if fmt not in SUPPORTED_FORMATS:
        raise ValidationException(
            f"The document format {fmt} is not supported. Use one of: {', '.join(SUPPORTED_FORMATS)}."
        )
    if len(data) > MAX_DOCUMENT_BYTES:
        raise ValidationException(
            f"The document {name} is {len(data)} bytes, over the 4.5 MB limit for a document. "
            "Send a smaller document or split it into several."
        )
    if fmt == "pdf":
        return _pdf_text(name, data)
    if fmt == "html":
        return _html_text(data)
    text = _utf8(name, data)
    if fmt == "csv":
        _check_csv(name, text)
    return text.strip()


def render_document(name: str, fmt: str, text: str) -> str:
    """How a document's text goes into the user turn, before the user's own text."""
    return f'<document name="{name}" format="{fmt}">\n{text}\n</document>'


def _utf8(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ValidationException(
            f"The document {name} is not valid UTF-8 text (invalid byte at offset {error.start}). "
            "Encode the document as UTF-8 and try again."
        ) from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n")


def _check_csv(name: str, text: str) -> None:
    try:
        for _row in csv.reader(io.StringIO(text), strict=True):
            pass
    except csv.Error as error:
        raise ValidationException(f"The document {name} is not valid CSV: {error}.") from None


def _collapse(text: str) -> str:
    """One space between words, no blank lines, no spaces at the ends of lines."""
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return "\n".join(line for line in lines if line)


def _html_text(data: bytes) -> str:
    # bs4 warns when markup looks like a file name or URL; a document is markup whatever it looks like.
    with warnings.catch_warnings(action="ignore"):
        soup = bs4.BeautifulSoup(data, "html.parser")
    for tag in soup.find_all(_INVISIBLE_TAGS):
        tag.decompose()
    return _collapse(soup.get_text("\n"))


def _pdf_text(name: str, data: bytes) -> str:
    # pypdf fails on damaged files with many exception types (its own, ValueError, KeyError, struct.error, ...), all
    # meaning the same thing here: the client sent a PDF we cannot read.
    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not _decrypt(reader):
            raise ValidationException(
                f"The document {name} is an encrypted PDF. Remove the password from the document and try again."
            )
        pages = [page.extract_text() for page in reader.pages]
    except ValidationException:
        raise
    except Exception:
        raise ValidationException(
            f"The document {name} is not a valid PDF file. Check that the file is not damaged and try again."
        ) from None
    return _collapse("\n\n".join(pages))


def _decrypt(reader: pypdf.PdfReader) -> bool:
    """Open a PDF encrypted with an empty user password (common: it only restricts printing or copying)."""
    try:
        return reader.decrypt("") != pypdf.PasswordType.NOT_DECRYPTED
    except pypdf.errors.DependencyError:  # AES without the optional cryptography package
        return False
