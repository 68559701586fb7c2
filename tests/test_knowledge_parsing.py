"""Parsers (every type, corrupt input, limits) and metadata sidecars (plain and typed forms)."""

from __future__ import annotations

import io
import json
import zipfile

import docx
import openpyxl
import pytest

from llamarock.knowledge import metadata, parsers
from llamarock.knowledge.parsers import ParseError, parse


def make_pdf(pages: list[str]) -> bytes:
    """A real PDF (one Helvetica text line per page), with a correct cross-reference table."""
    objects: list[bytes] = [b"<< /Type /Catalog /Pages 2 0 R >>", b""]
    font = 3
    objects.append(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        content = len(objects)
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
            b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (content, font)
        )
        kids.append(len(objects))
    objects[1] = b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids),
        len(kids),
    )
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def make_docx() -> bytes:
    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    document.add_paragraph("Revenue grew in the north region.")
    table = document.add_table(rows=2, cols=2)
    table.cell(0, 0).text, table.cell(0, 1).text = "region", "revenue"
    table.cell(1, 0).text, table.cell(1, 1).text = "north", "42"
    document.add_paragraph("Closing words.")
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def make_xlsx() -> bytes:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Prices"
    sheet.append(["item", "price"])
    sheet.append(["apple", 1.5])
    second = book.create_sheet("Stock")
    second.append(["apple", 12])
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()


def test_pdf_text_and_page_numbers() -> None:
    parsed = parse("report.PDF", make_pdf(["First page about cats", "Second page about dogs"]))
    assert parsed.kind == "pdf"
    assert "First page about cats" in parsed.text and "Second page about dogs" in parsed.text
    assert parsed.page_at(parsed.text.index("cats")) == 1
    assert parsed.page_at(parsed.text.index("dogs")) == 2


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog",  # truncated
        b"not a pdf at all",
        make_pdf(["hello"])[:200] + b"\x00garbage" * 20,
        b"",
    ],
    ids=["truncated", "not-pdf", "garbled", "empty"],
)
def test_corrupt_pdf_is_a_parse_error(data: bytes) -> None:
    with pytest.raises(ParseError, match="PDF"):
        parse("broken.pdf", data)


def test_html_keeps_text_drops_scripts() -> None:
    html = b"""<html><head><title>T</title><style>p{}</style></head><body><h1>Heading</h1>
    <script>var secret = 1;</script><p>First&nbsp;para with <b>bold</b> words.</p>
    <ul><li>item one</li></ul></body></html>"""
    parsed = parse("page.html", html)
    assert "Heading" in parsed.text and "First para with" in parsed.text and "item one" in parsed.text
    assert "secret" not in parsed.text and "p{}" not in parsed.text


def test_markdown_and_text_are_kept_as_written() -> None:
    md = b"# Title\r\n\r\nSome *markdown* text.\r\n"
    assert parse("notes.md", md).text == "# Title\n\nSome *markdown* text.\n"
    assert parse("a.txt", "\ufeffcafé".encode()).text == "café"
    assert parse("a.txt", "hello".encode("utf-16")).text == "hello"


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("a.txt", b"\xff\xfe\xfa\x00\x00binary", "NUL|UTF-8"),
        ("a.txt", "caf\xe9".encode("latin-1"), "not UTF-8"),
        ("a.csv", b"a,b\n\x80\x81", "not UTF-8"),
        ("a.docx", b"PK\x03\x04 not really a zip", "not a .docx"),
        ("a.docx", b"plain text", "not a .docx"),
        ("a.xlsx", b"plain text", "not a .xlsx"),
    ],
)
def test_bad_text_and_office_files(name: str, data: bytes, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse(name, data)


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for entry, body in entries.items():
            archive.writestr(entry, body)
    return buffer.getvalue()


def test_zip_that_is_not_an_office_file() -> None:
    with pytest.raises(ParseError, match="Word file could not be read"):
        parse("a.docx", _zip({"hello.txt": b"hi"}))
    with pytest.raises(ParseError, match="Excel file could not be read"):
        parse("a.xlsx", _zip({"hello.txt": b"hi"}))
    with pytest.raises(ParseError, match=r"not a \.docx"):
        parse("a.docx", make_docx()[:500])  # truncated: no longer a zip


def test_csv_rows() -> None:
    parsed = parse("t.csv", b'name,notes\r\nalice,"likes, commas"\r\n\r\nbob,plain\r\n')
    assert parsed.text.splitlines() == ["name, notes", "alice, likes, commas", "bob, plain"]
    assert [parsed.text[s:].splitlines()[0] for s in parsed.section_starts] == parsed.text.splitlines()
    semicolons = parse("t.csv", b"a;b;c\n1;2;3\n")
    assert semicolons.text.splitlines() == ["a, b, c", "1, 2, 3"]


def test_docx_paragraphs_and_tables_in_order() -> None:
    text = parse("r.docx", make_docx()).text
    assert (
        text.index("Quarterly report") < text.index("Revenue grew") < text.index("north | 42") < text.index("Closing")
    )
    assert "region | revenue" in text


def test_xlsx_sheets_and_rows() -> None:
    parsed = parse("book.xlsx", make_xlsx())
    assert parsed.text.splitlines() == ["Sheet: Prices", "item, price", "apple, 1.5", "Sheet: Stock", "apple, 12"]
    assert [parsed.text[s:].splitlines()[0] for s in parsed.section_starts] == ["Sheet: Prices", "Sheet: Stock"]


def test_unsupported_and_oversize() -> None:
    with pytest.raises(ParseError, match=r"unsupported file type \(\.exe\); supported: .csv, .docx") as info:
        parse("setup.exe", b"MZ")
    assert ".pdf" in str(info.value) and ".xlsx" in str(info.value)
    with pytest.raises(ParseError, match="no extension"):
        parse("README", b"x")
    with pytest.raises(ParseError, match="50 MB"):
        parse("big.txt", b"a" * (parsers.MAX_FILE_BYTES + 1))
    assert parsers.is_supported("dir.v2/report.htm") and not parsers.is_supported("report.pdf.metadata.json")


# --- metadata sidecars ----------------------------------------------------------------------------------------
def test_plain_sidecar() -> None:
    data = json.dumps({"metadataAttributes": {"k": "v", "n": 3, "f": 2.5, "b": True, "l": ["a", "b"]}}).encode()
    assert metadata.parse_sidecar(data) == {"k": "v", "n": 3, "f": 2.5, "b": True, "l": ["a", "b"]}


def test_typed_sidecar_and_mixed_forms() -> None:
    data = json.dumps(
        {
            "metadataAttributes": {
                "genre": {"value": {"type": "STRING", "stringValue": "drama"}, "includeForEmbedding": True},
                "year": {"value": {"type": "NUMBER", "numberValue": 1994}, "includeForEmbedding": False},
                "public": {"value": {"type": "BOOLEAN", "booleanValue": False}},
                "tags": {"value": {"type": "STRING_LIST", "stringListValue": ["x", "y"]}, "includeForEmbedding": True},
                "plain": "yes",
            }
        }
    ).encode()
    sidecar = metadata.parse_sidecar_full(data)
    assert sidecar.attributes == {"genre": "drama", "year": 1994, "public": False, "tags": ["x", "y"], "plain": "yes"}
    assert sidecar.include_for_embedding == ("genre", "tags")
    assert (
        metadata.embedding_prefix(sidecar.attributes, sidecar.include_for_embedding) == "genre: drama\ntags: x, y\n\n"
    )
    assert metadata.sidecar_for("docs/a.pdf") == "docs/a.pdf.metadata.json" and metadata.is_sidecar(
        "a.pdf.metadata.json"
    )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid UTF-8 JSON"),
        (b"[]", '"metadataAttributes" object'),
        (b'{"metadataAttributes": {}, "other": 1}', "unknown members"),
        (b'{"metadataAttributes": {"k": {"value": {"type": "DATE", "stringValue": "x"}}}}', "type must be one of"),
        (b'{"metadataAttributes": {"k": {"value": {"type": "NUMBER", "stringValue": "3"}}}}', "needs numberValue"),
        (b'{"metadataAttributes": {"k": {"value": {"type": "NUMBER", "numberValue": "3"}}}}', "does not hold a NUMBER"),
        (
            b'{"metadataAttributes": {"k": {"value": {"type": "STRING", "stringValue": "x"},'
            b' "includeForEmbedding": 1}}}',
            "true or false",
        ),
        (b'{"metadataAttributes": {"k": [1, 2]}}', "only strings"),
        (b'{"metadataAttributes": {"k": null}}', "must be a string, number"),
        (b'{"metadataAttributes": {"x-amz-bedrock-kb-source-uri": "s3://x"}}', "reserved"),
        (json.dumps({"metadataAttributes": {"k": "v" * 11000}}).encode(), "10 KB"),
    ],
)
def test_bad_sidecars(body: bytes, message: str) -> None:
    with pytest.raises(metadata.MetadataError, match=message):
        metadata.parse_sidecar(body)
