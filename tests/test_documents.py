"""Document blocks to prompt text: formats, limits, Bedrock's name rule."""

from __future__ import annotations

import io

import pypdf
import pytest

from llamarock.bedrock import documents
from llamarock.bedrock.documents import (
    MAX_DOCUMENT_BYTES,
    check_document_name,
    check_document_names,
    document_text,
    render_document,
)
from llamarock.errors import ValidationException


def make_pdf(*pages: str) -> bytes:
    """A minimal valid PDF with one line of Helvetica text per page, xref offsets computed."""
    count = len(pages)
    kids = " ".join(f"{4 + 2 * i} 0 R" for i in range(count))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {count} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    for index, text in enumerate(pages):
        content = f"BT /F1 12 Tf 20 100 Td ({text}) Tj ET".encode()
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 300 200] /Resources << /Font << /F1 3 0 R >> >> "
            f"/Contents {5 + 2 * index} 0 R >>".encode()
        )
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n%s\nendobj\n" % (number, body))
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def encrypted(pdf: bytes, user_password: str) -> bytes:
    writer = pypdf.PdfWriter(clone_from=pypdf.PdfReader(io.BytesIO(pdf)))
    writer.encrypt(user_password=user_password, owner_password="owner secret", algorithm="RC4-128")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def test_pdf_text_of_every_page() -> None:
    text = document_text("pdf", "Q3 report", make_pdf("Revenue grew 12 percent", "Costs fell"))
    assert "Revenue grew 12 percent" in text
    assert "Costs fell" in text
    assert text.index("Revenue") < text.index("Costs")


def test_pdf_with_empty_user_password_is_read() -> None:
    text = document_text("pdf", "locked", encrypted(make_pdf("Only printing is restricted"), ""))
    assert "Only printing is restricted" in text


def test_pdf_with_a_password_is_refused() -> None:
    with pytest.raises(ValidationException, match="encrypted"):
        document_text("pdf", "secret", encrypted(make_pdf("Top secret"), "letmein"))


@pytest.mark.parametrize("data", [b"not a pdf at all", b"%PDF-1.4\n1 0 obj\n<< /Type", b"", make_pdf("x")[:60]])
def test_corrupt_pdf_is_refused(data: bytes) -> None:
    with pytest.raises(ValidationException, match="not a valid PDF"):
        document_text("pdf", "broken", data)


def test_txt_and_md_are_utf8() -> None:
    assert document_text("txt", "notes", "caf\u00e9 \u2615\r\nline two\n".encode()) == "caf\u00e9 \u2615\nline two"
    assert document_text("md", "readme", b"\xef\xbb\xbf# Title\n\n* item\n") == "# Title\n\n* item"


@pytest.mark.parametrize("fmt", ["txt", "md", "csv"])
def test_bad_utf8_is_refused(fmt: str) -> None:
    with pytest.raises(ValidationException, match="not valid UTF-8 text") as caught:
        document_text(fmt, "latin", "caf\u00e9".encode("latin-1"))
    assert caught.value.code == "ValidationException"


def test_csv_is_kept_readable() -> None:
    data = b'city,temp\nParis,21\n"New York, NY",25\n'
    text = document_text("csv", "weather", data)
    assert text == 'city,temp\nParis,21\n"New York, NY",25'


def test_malformed_csv_is_refused() -> None:
    with pytest.raises(ValidationException, match="not valid CSV"):
        document_text("csv", "bad", b'a,"b"c\n')


def test_html_text_without_scripts_and_styles() -> None:
    html = (
        b"<html><head><title>Menu</title><style>p { color: red }</style>"
        b"<script>alert('x')</script></head><body><h1>Today's   menu</h1>"
        b"<p>Soup\n\n\n   of the day</p><noscript>enable js</noscript><ul><li>Bread</li><li>Wine</li></ul>"
        b"</body></html>"
    )
    text = document_text("html", "menu", html)
    assert "alert" not in text and "color" not in text and "enable js" not in text
    assert text == "Menu\nToday's menu\nSoup\nof the day\nBread\nWine"


def test_html_that_looks_like_a_file_name_raises_no_warning() -> None:
    assert document_text("html", "page", b"index.html") == "index.html"


def test_oversize_document_is_refused() -> None:
    assert document_text("txt", "big", b"a" * MAX_DOCUMENT_BYTES) == "a" * MAX_DOCUMENT_BYTES
    with pytest.raises(ValidationException, match=r"4\.5 MB"):
        document_text("txt", "big", b"a" * (MAX_DOCUMENT_BYTES + 1))


@pytest.mark.parametrize("fmt", ["doc", "docx", "xls", "xlsx"])
def test_office_formats_are_not_supported_yet(fmt: str) -> None:
    with pytest.raises(ValidationException) as caught:
        document_text(fmt, "sheet", b"PK\x03\x04")
    assert caught.value.message == (
        f"The document format {fmt} is not supported by this server yet. "
        "Convert the document to pdf, html, txt, md or csv."
    )


@pytest.mark.parametrize("fmt", ["rtf", "PDF", ""])
def test_unknown_format_lists_the_supported_ones(fmt: str) -> None:
    with pytest.raises(ValidationException, match="txt, md, html, csv, pdf"):
        document_text(fmt, "x", b"hello")


def test_render_document() -> None:
    assert (
        render_document("Q3 report", "pdf", "Revenue")
        == '<document name="Q3 report" format="pdf">\nRevenue\n</document>'
    )


@pytest.mark.parametrize("name", ["Q3 report", "report-2024 (final) [v2]", "a", "snake_case", " padded ", "x" * 200])
def test_valid_document_names(name: str) -> None:
    check_document_name(name)


@pytest.mark.parametrize(
    "name", ["report.pdf", "two  spaces", "tab\there", "r\u00e9sum\u00e9", "a/b", "John's", "", "x" * 201, "a\nb"]
)
def test_invalid_document_names(name: str) -> None:
    with pytest.raises(ValidationException) as caught:
        check_document_name(name)
    assert caught.value.message == documents.DOCUMENT_NAME_MESSAGE
    assert caught.value.message.startswith(
        "The document file name can only contain alphanumeric characters, whitespace characters, hyphens, "
        "parentheses, and square brackets."
    )


def test_document_names_of_a_request() -> None:
    check_document_names(["a", "b", "c", "d", "e"])
    with pytest.raises(ValidationException, match="more than 5 documents"):
        check_document_names(["a", "b", "c", "d", "e", "f"])
    with pytest.raises(ValidationException, match="duplicate document names"):
        check_document_names(["a", "a"])
    with pytest.raises(ValidationException, match="document file name"):
        check_document_names(["a.txt"])
