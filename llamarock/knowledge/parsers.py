"""Text out of the file types Bedrock knowledge bases ingest: pdf, html, md, txt, csv, docx, xlsx.

``parse(name, data)`` picks the parser by the name's extension and returns a :class:`ParsedDocument`: the text
(what is chunked, embedded and returned) and, where the format has them, the offsets where its pages (pdf), rows
(csv) or sheets (xlsx) start, so a chunk can be given its page number.

Every failure is a :class:`ParseError` whose message can be shown to the user as it is (the ingestion job's
failure reasons): a corrupt or encrypted file, a file that is not what its extension says, an unsupported extension
(the message names the supported ones), or a file over Bedrock's 50 MB limit (checked here, before any parsing).

Libraries: pypdf (BSD) for PDF text, page by page; BeautifulSoup (MIT) with the standard library's html.parser
for HTML; python-docx (MIT) for Word paragraphs and tables in body order; openpyxl (MIT) for Excel, read-only and
values only (formulas give their last saved values); the csv module for CSV.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
import zipfile
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

MAX_FILE_BYTES = 50 * 1024 * 1024  # Bedrock's per-file limit for knowledge-base data sources


class ParseError(ValueError):
    """The file cannot be turned into text; the message says why, for the user."""


@dataclass(frozen=True)
class ParsedDocument:
    text: str
    kind: str  # the extension it was parsed as, e.g. "pdf"
    page_starts: tuple[int, ...] = field(default=())  # pdf: offset of each page's text (page 1 first)
    section_starts: tuple[int, ...] = field(default=())  # csv rows / xlsx sheets: offset of each

    def page_at(self, offset: int) -> int | None:
        """The 1-based page holding this text offset (pdf only)."""
        if not self.page_starts:
            return None
        return max(1, bisect_right(self.page_starts, offset))


def _pdf(data: bytes) -> ParsedDocument:
    from pypdf import PdfReader

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = PdfReader(io.BytesIO(data), strict=False)
            if reader.is_encrypted:
                try:
                    ok = bool(reader.decrypt(""))
                except Exception:
                    ok = False
                if not ok:
                    raise ParseError("the PDF is encrypted with a password; upload it without the password")
            pages = [page.extract_text() or "" for page in reader.pages]
    except ParseError:
        raise
    except Exception as exc:  # pypdf raises many types (PdfReadError, ValueError, KeyError...) on broken files
        raise ParseError(
            f"the PDF could not be read; it may be corrupt or not a PDF ({type(exc).__name__}: {exc})"
        ) from None
    if not pages:
        raise ParseError("the PDF has no pages")
    starts, parts, offset = [], [], 0
    for text in pages:
        starts.append(offset)
        parts.append(text)
        offset += len(text) + 2
    return ParsedDocument("\n\n".join(parts), "pdf", page_starts=tuple(starts))


def _decode(data: bytes, what: str) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            pass
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ParseError(
            f"the {what} file is not UTF-8 text (bad byte at offset {exc.start}); save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise ParseError(f"the {what} file holds NUL bytes: it looks binary, not text")
    return text


_BLANKS = re.compile(r"\n[ \t\r\f\v]*\n(\s*\n)*")
_SPACES = re.compile(r"[ \t\r\f\v\xa0]+")


def _tidy(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.splitlines())
    return _BLANKS.sub("\n\n", "\n".join(lines)).strip()


def _html(data: bytes) -> ParsedDocument:
    from bs4 import BeautifulSoup

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            soup = BeautifulSoup(data, "html.parser")
            for tag in soup(["script", "style", "noscript", "template", "svg", "head"]):
                tag.decompose()
            text = soup.get_text("\n")
    except Exception as exc:
        raise ParseError(f"the HTML could not be read ({type(exc).__name__}: {exc})") from None
    return ParsedDocument(_tidy(text), "html")


def _text(kind: str) -> Callable[[bytes], ParsedDocument]:
    def parse_text(data: bytes) -> ParsedDocument:
        return ParsedDocument(_decode(data, kind).replace("\r\n", "\n"), kind)

    return parse_text


def _rows_document(kind: str, sections: Iterable[tuple[str | None, Iterable[Iterable[Any]]]]) -> ParsedDocument:
    """Rows as lines of comma-separated cells; a titled section (a sheet) starts with its title line."""
    lines: list[str] = []
    starts: list[int] = []
    offset = 0
    for title, rows in sections:
        if title is not None:
            starts.append(offset)
            lines.append(title)
            offset += len(title) + 1
        for row in rows:
            cells = ["" if cell is None else str(cell).strip() for cell in row]
            while cells and not cells[-1]:
                cells.pop()
            if not cells:
                continue
            line = ", ".join(cells)
            if title is None:
                starts.append(offset)
            lines.append(line)
            offset += len(line) + 1
    return ParsedDocument("\n".join(lines), kind, section_starts=tuple(starts))


def _csv(data: bytes) -> ParsedDocument:
    text = _decode(data, "CSV")
    try:
        dialect: Any = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    try:
        rows = list(csv.reader(io.StringIO(text, newline=""), dialect))
    except csv.Error as exc:
        raise ParseError(f"the CSV could not be read: {exc}") from None
    return _rows_document("csv", [(None, rows)])


def _docx(data: bytes) -> ParsedDocument:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    try:
        document = docx.Document(io.BytesIO(data))
        blocks: list[str] = []
        body = document.element.body
        for child in body.iterchildren():
            tag = child.tag.rsplit("}", 1)[-1]
            if tag == "p":
                blocks.append(Paragraph(child, document).text)
            elif tag == "tbl":
                for row in Table(child, document).rows:
                    cells = list(dict.fromkeys(cell.text.strip() for cell in row.cells))  # merged cells repeat
                    blocks.append(" | ".join(c for c in cells if c))
    except Exception as exc:  # python-docx: PackageNotFoundError, KeyError, BadZipFile, lxml errors...
        raise ParseError(
            f"the Word file could not be read; it may be corrupt or not a .docx ({type(exc).__name__})"
        ) from None
    return ParsedDocument(_tidy("\n".join(blocks)), "docx")


def _xlsx(data: bytes) -> ParsedDocument:
    import openpyxl

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # openpyxl warns about unsupported extensions and styles
            book = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
            sheets = [
                (f"Sheet: {ws.title}", [list(r) for r in ws.iter_rows(values_only=True)]) for ws in book.worksheets
            ]
            book.close()
    except Exception as exc:  # InvalidFileException, BadZipFile, KeyError...
        raise ParseError(
            f"the Excel file could not be read; it may be corrupt or not a .xlsx ({type(exc).__name__})"
        ) from None
    return _rows_document("xlsx", [(title, rows) for title, rows in sheets])


PARSERS: dict[str, Callable[[bytes], ParsedDocument]] = {
    "pdf": _pdf,
    "html": _html,
    "htm": _html,
    "md": _text("md"),
    "markdown": _text("md"),
    "txt": _text("txt"),
    "csv": _csv,
    "docx": _docx,
    "xlsx": _xlsx,
}
SUPPORTED = tuple(sorted(PARSERS))


def extension(name: str) -> str:
    suffix = PurePosixPath(name.replace("\\", "/")).suffix
    return suffix[1:].lower() if suffix else ""


def is_supported(name: str) -> bool:
    return extension(name) in PARSERS


def parse(name: str, data: bytes) -> ParsedDocument:
    """The text of a file named ``name``; ParseError (user-facing message) when it cannot be had."""
    ext = extension(name)
    if ext not in PARSERS:
        shown = f".{ext}" if ext else "no extension"
        raise ParseError(f"unsupported file type ({shown}); supported: {', '.join('.' + e for e in SUPPORTED)}")
    if len(data) > MAX_FILE_BYTES:
        raise ParseError(f"the file is {len(data):,} bytes; the limit is {MAX_FILE_BYTES:,} bytes (50 MB) per file")
    if ext in ("docx", "xlsx") and not zipfile.is_zipfile(io.BytesIO(data)):
        raise ParseError(f"the file is not a .{ext} (an Office file is a zip archive; this one is not)")
    return PARSERS[ext](data)
