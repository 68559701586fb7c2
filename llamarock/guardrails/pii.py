"""Sensitive information: Bedrock's PII entity types found in text, and custom regexes.

Each entity type has one recognizer. Where a well-kept library knows the format it does the work: ``phonenumbers``
(Google's libphonenumber) finds and validates PHONE numbers in text; ``python-stdnum`` validates the check digits of
card numbers (Luhn), IBANs, SWIFT/BIC codes, US routing numbers, SSNs and ITINs, UK NHS numbers and Canadian SINs,
so that a run of digits is only reported when it really is such a number (VINs: the ISO 3779 check digit, here).
NAME uses the first and last names of Faker's English-language person providers as a gazetteer, with titles and
cues ("my name is", "Dear"); ADDRESS is a US street-address grammar on the USPS street suffixes. Formats with no
check digit and no library (passport, driver's licence, licence plate, PIN, password, username, CVV, expiry, bank
account, AWS secret key, UK UTR, NHS number, Canadian health number) are reported only next to the words that name
them ("passport number", "PIN"...), as a person writes them.

Matches never overlap: the longest wins, then a type named by its words, then the earliest. Every repetition in these
patterns is bounded where a match could start at many places in one long run of characters (an email's local part,
a URL, a run of digits), so hostile text costs linear time; custom regexes run on RE2 (linear time: a user's
pattern cannot stall the server).
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from typing import Any

import phonenumbers
import re2
from stdnum import bic, iban, luhn
from stdnum.ca import sin
from stdnum.gb import nhs
from stdnum.us import itin, rtn, ssn

ENTITY_TYPES = (
    "ADDRESS", "AGE", "AWS_ACCESS_KEY", "AWS_SECRET_KEY", "CA_HEALTH_NUMBER", "CA_SOCIAL_INSURANCE_NUMBER",
    "CREDIT_DEBIT_CARD_CVV", "CREDIT_DEBIT_CARD_EXPIRY", "CREDIT_DEBIT_CARD_NUMBER", "DRIVER_ID", "EMAIL",
    "INTERNATIONAL_BANK_ACCOUNT_NUMBER", "IP_ADDRESS", "LICENSE_PLATE", "MAC_ADDRESS", "NAME", "PASSWORD", "PHONE",
    "PIN", "SWIFT_CODE", "UK_NATIONAL_HEALTH_SERVICE_NUMBER", "UK_NATIONAL_INSURANCE_NUMBER",
    "UK_UNIQUE_TAXPAYER_REFERENCE_NUMBER", "URL", "USERNAME", "US_BANK_ACCOUNT_NUMBER", "US_BANK_ROUTING_NUMBER",
    "US_INDIVIDUAL_TAX_IDENTIFICATION_NUMBER", "US_PASSPORT_NUMBER", "US_SOCIAL_SECURITY_NUMBER",
    "VEHICLE_IDENTIFICATION_NUMBER",
)


@dataclass(frozen=True)
class Entity:
    """One entity found: its type (a PII type, or a custom regex's name), the text and where it is."""

    type: str
    text: str
    start: int
    end: int


Finder = Callable[[str], Iterable[tuple[int, int]]]


def _digits(text: str) -> str:
    return re.sub(r"\D", "", text)


def _pattern(pattern: str, valid: Callable[[str], bool] | None = None, flags: int = 0) -> Finder:
    """Spans of ``pattern`` (its group ``v`` when it has one) whose text ``valid`` accepts."""
    compiled = re.compile(pattern, flags)
    group = "v" if "v" in compiled.groupindex else 0

    def find(text: str) -> Iterable[tuple[int, int]]:
        for match in compiled.finditer(text):
            start, end = match.span(group)
            if start < 0:
                continue
            if valid is None or valid(text[start:end]):
                yield start, end
    return find


def _cued(cue: str, value: str, valid: Callable[[str], bool] | None = None) -> Finder:
    """A value written right after the words that name it (``cue``), e.g. ``PIN: 4821`` or ``passport no. X123``."""
    return _pattern(rf"(?:{cue})(?:\s*(?:number|num|no\.?|#|code|is|was|:|=|-)){{0,3}}\s*(?P<v>{value})",
                    valid, re.IGNORECASE)


def _stdnum(module: Any) -> Callable[[str], bool]:
    is_valid: Callable[[str], bool] = module.is_valid
    return is_valid


def _ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


_VIN_VALUES = {**{str(d): d for d in range(10)}, **dict(zip("ABCDEFGH", range(1, 9), strict=True)),
               **dict(zip("JKLMN", range(1, 6), strict=True)), "P": 7, "R": 9,
               **dict(zip("STUVWXYZ", range(2, 10), strict=True))}
_VIN_WEIGHTS = (8, 7, 6, 5, 4, 3, 2, 10, 0, 9, 8, 7, 6, 5, 4, 3, 2)


def _vin(text: str) -> bool:
    """ISO 3779 VIN with the North American check digit (position 9)."""
    value = text.upper()
    total = sum(_VIN_VALUES[c] * w for c, w in zip(value, _VIN_WEIGHTS, strict=True))
    check = total % 11
    return value[8] == ("X" if check == 10 else str(check)) and any(c.isalpha() for c in value)


def _card(text: str) -> bool:
    """A payment card number: 13 to 19 digits (12 for Maestro, which starts with 5 or 6) passing Luhn."""
    digits = _digits(text)
    size = 12 <= len(digits) <= 19 if digits[0] in "56" else 13 <= len(digits) <= 19
    return size and luhn.is_valid(digits) and digits[0] in "123456"


def _ni(text: str) -> bool:
    value = re.sub(r"\s", "", text).upper()
    return value[:2] not in {"BG", "GB", "NK", "KN", "TN", "NT", "ZZ"}


# Where a phone number may be: a run of digits and the punctuation numbers are written with, 7+ digits long.
_PHONE_CANDIDATE = re.compile(r"[+(]?\d[\d\s().\-/]{5,24}\d(?:\s{0,3}(?:x|ext\.?)\s{0,3}\d{1,6})?")


def _phones(text: str) -> Iterable[tuple[int, int]]:
    """Phone numbers as libphonenumber finds and validates them (US numbers without a country code), run on the
    stretches of text that hold seven digits or more (the matcher is slow on long prose)."""
    for candidate in _PHONE_CANDIDATE.finditer(text):
        if sum(c.isdigit() for c in candidate.group()) < 7:
            continue
        start = max(0, candidate.start() - 1)
        window = text[start:candidate.end() + 1]
        for match in phonenumbers.PhoneNumberMatcher(window, "US", leniency=phonenumbers.Leniency.VALID):
            yield start + match.start, start + match.end


_NAME_TOKEN = r"[A-Z][a-z]+(?:[-'][A-Z][a-z]+)?"
_TITLES = r"(?:Mr|Mrs|Ms|Miss|Mx|Dr|Prof|Sir|Madam)\.?"
# Words after which a capitalised name is a person's even when the name lists do not know it.
_STRONG_CUES = re.compile(
    r"(?:\b(?:my name is|name is|named|called|I am|I'm|Dear|signed by|signed|belongs to|attn:?)\s+|(?:^|\n)\s*"
    r"Name\s*:\s*)$",
    re.IGNORECASE,
)
_NAME_CUES = re.compile(
    r"(?:\b(?:my name is|name is|named|called|I am|I'm|this is|Dear|Hi|Hello|Thanks|Regards|Sincerely|signed|"
    r"contact|patient|customer|employee|from|to|by|with|for|ask|call|email|cc|attn:?)\s+|(?:^|\n)\s*(?:Name|From|To|"
    r"Contact)\s*:\s*)$",
    re.IGNORECASE,
)


NAME_LOCALES = ("en_US", "en_GB", "en_IE", "en_NZ", "en_IN")


@cache
def _names() -> tuple[frozenset[str], frozenset[str]]:
    """First and last names: Faker's person providers of ``NAME_LOCALES``."""
    first: set[str] = set()
    last: set[str] = set()
    for locale in NAME_LOCALES:
        provider = importlib.import_module(f"faker.providers.person.{locale}").Provider
        for attribute in ("first_names", "first_names_female", "first_names_male"):
            first.update(getattr(provider, attribute, ()))
        last.update(provider.last_names)
    return frozenset(first), frozenset(last)


@cache
def _street_suffixes() -> str:
    """USPS street suffixes (Faker's en_US address provider lists them) and their usual abbreviations."""
    from faker.providers.address.en_US import Provider

    words = {*Provider.street_suffixes, "St", "Ave", "Rd", "Blvd", "Ln", "Dr", "Ct", "Pl", "Ter", "Cir", "Hwy",
             "Pkwy", "Sq", "Trl", "Plz", "Aly", "Cres", "Close"}
    return "|".join(sorted(words, key=len, reverse=True))


def _person_names(text: str) -> Iterable[tuple[int, int]]:
    """Capitalised words that are a person's name: a title and the names after it ("Dr. Jane Roe"), a known first
    name followed by a known last name (an initial or a middle name may stand between), or one known name right
    after a cue such as "my name is" or "Dear"."""
    first, last = _names()
    tokens = list(re.finditer(rf"{_TITLES}(?=\s)|{_NAME_TOKEN}|[A-Z]\.", text))
    runs: list[list[re.Match[str]]] = []
    for token in tokens:
        if runs and re.fullmatch(r"[ \t]+", text[runs[-1][-1].end():token.start()]):
            runs[-1].append(token)
        else:
            runs.append([token])
    for run in runs:
        words = [t.group() for t in run]
        i = 0
        while i < len(run):
            word = words[i]
            end = None
            if re.fullmatch(_TITLES, word) and i + 1 < len(run) and re.fullmatch(_NAME_TOKEN, words[i + 1]):
                end = i + 1
                while end + 1 < len(run) and end - i < 3 and re.fullmatch(_NAME_TOKEN, words[end + 1]):
                    end += 1
            elif word in first:
                for j in range(i + 1, min(i + 4, len(run))):
                    if words[j] in last and not (j + 1 < len(run) and words[j + 1] in last):
                        end = j
                        break
                if end is None and _NAME_CUES.search(text[max(0, run[i].start() - 40):run[i].start()]):
                    end = i + 1 if i + 1 < len(run) and re.fullmatch(_NAME_TOKEN, words[i + 1]) else i
            elif word in last and _NAME_CUES.search(text[max(0, run[i].start() - 40):run[i].start()]):
                end = i
            elif re.fullmatch(_NAME_TOKEN, word) and _STRONG_CUES.search(text[max(0, run[i].start() - 40):
                                                                               run[i].start()]):
                end = i
                while end + 1 < len(run) and end - i < 2 and re.fullmatch(_NAME_TOKEN, words[end + 1]):
                    end += 1
            if end is None:
                i += 1
                continue
            yield run[i].start(), run[end].end()
            i = end + 1


@cache
def _address() -> re.Pattern[str]:
    return re.compile(
        rf"\b\d{{1,6}}\s+(?:[NSEW]\.?\s+|North\s+|South\s+|East\s+|West\s+)?(?:\d{{1,3}}(?:st|nd|rd|th)|[A-Z][a-z]+)"
        rf"(?:\s+[A-Z][a-z]+){{0,3}}?\s+(?:{_street_suffixes()})\b\.?(?:\s+(?:NW|NE|SW|SE|N|S|E|W)\b\.?)?"
        r"(?:,?\s+(?:Apt|Apartment|Suite|Ste|Unit|#)\.?\s*[A-Za-z0-9-]+)?"
        r"(?:,\s*[A-Z][a-z]+(?:\s+[A-Z][a-z]+){0,2}(?:,\s*|\s+)[A-Z]{2}\s+\d{5}(?:-\d{4})?)?"
        r"|\bP\.?\s?O\.?\s+Box\s+\d{1,6}\b"
    )


def _addresses(text: str) -> Iterable[tuple[int, int]]:
    for match in _address().finditer(text):
        yield match.span()


def _age_spans(text: str) -> Iterable[tuple[int, int]]:
    for match in re.finditer(r"\b(?P<v>\d{1,3})(?=[- ]years?[- ]old\b)|\b(?:age|aged)\s*:?\s*(?P<w>\d{1,3})\b",
                             text, re.IGNORECASE):
        group = "v" if match.group("v") is not None else "w"
        yield match.span(group)


_FINDERS: dict[str, Finder] = {
    "EMAIL": _pattern(r"\b[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}\b"),
    "PHONE": _phones,
    "URL": _pattern(r"\b(?:https?://|ftp://|www\.)[^\s<>\"'()\[\]]{0,2047}[^\s<>\"'()\[\].,;:!?]",
                    flags=re.IGNORECASE),
    "IP_ADDRESS": _pattern(
        r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}|(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}|"
        r"(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4})?|::(?:[0-9A-Fa-f]{1,4}:){0,5}[0-9A-Fa-f]{1,4})"
        r"(?![\w.:])", _ip),
    "MAC_ADDRESS": _pattern(r"\b[0-9A-Fa-f]{2}(?:([:-])[0-9A-Fa-f]{2})(?:\1[0-9A-Fa-f]{2}){4}\b"),
    "US_SOCIAL_SECURITY_NUMBER": _pattern(r"\b\d{3}-\d{2}-\d{4}\b", _stdnum(ssn)),
    "US_INDIVIDUAL_TAX_IDENTIFICATION_NUMBER": _pattern(r"\b9\d{2}[- ]?[5-9]\d[- ]?\d{4}\b", _stdnum(itin)),
    "CREDIT_DEBIT_CARD_NUMBER": _pattern(r"\b\d{4}(?:[ -]?\d{4}){2}(?:[ -]?\d{1,7})?\b|\b\d{4}[ -]?\d{6}[ -]?\d{5}\b",
                                         _card),
    "CREDIT_DEBIT_CARD_CVV": _cued(r"\bCVV2?|\bCVC2?|\bCID|\bsecurity code|\bcard verification (?:value|code)",
                                   r"\b\d{3,4}\b"),
    "CREDIT_DEBIT_CARD_EXPIRY": _cued(r"\bexp(?:iry|iration|ires|\.)?(?:\s+date)?|\bvalid (?:thru|through|until)",
                                      r"\b(?:0[1-9]|1[0-2])\s?/\s?(?:\d{2}|20\d{2})\b"),
    "INTERNATIONAL_BANK_ACCOUNT_NUMBER": _pattern(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b",
                                                  _stdnum(iban)),
    "SWIFT_CODE": _cued(r"\bSWIFT|\bBIC", r"\b[A-Z]{6}[A-Z0-9]{2}(?:[A-Z0-9]{3})?\b", _stdnum(bic)),
    "US_BANK_ROUTING_NUMBER": _cued(r"\brouting|\bABA|\bRTN", r"\b\d{9}\b", _stdnum(rtn)),
    "US_BANK_ACCOUNT_NUMBER": _cued(r"\b(?:bank |checking |savings )?account", r"\b\d{8,17}\b"),
    "US_PASSPORT_NUMBER": _cued(r"\bpassport", r"\b[A-Z]?\d{8,9}\b"),
    "DRIVER_ID": _cued(r"\bdriver'?s?\s+licen[cs]e|\bdriving licen[cs]e|\bDL",
                       r"\b(?=[A-Z0-9-]*\d)[A-Z0-9][A-Z0-9-]{4,17}[A-Z0-9]\b"),
    "LICENSE_PLATE": _cued(r"\b(?:licen[cs]e|number|registration) plate|\bplate", r"\b(?=[A-Z0-9 -]*\d)"
                           r"[A-Z0-9]{1,4}[ -]?[A-Z0-9]{1,4}\b"),
    "VEHICLE_IDENTIFICATION_NUMBER": _pattern(r"\b[A-HJ-NPR-Z0-9]{17}\b", _vin),
    "AWS_ACCESS_KEY": _pattern(r"\b(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|APKA)[A-Z0-9]{16}\b"),
    "AWS_SECRET_KEY": _cued(r"\b(?:aws_)?secret(?:[ _]access)?[ _]key|\bsecret", r"(?<![A-Za-z0-9/+])"
                            r"(?=[A-Za-z0-9/+]*[0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])"),
    "PASSWORD": _cued(r"\bpassword|\bpasswd|\bpwd|\bpass ?phrase", r"(?!(?:is|was)\b)[^\s,;'\"]{4,64}(?<![.!?])"),
    "PIN": _cued(r"\bPIN", r"\b\d{4,6}\b"),
    "USERNAME": _cued(r"\buser ?name|\buser id|\blogin|\bhandle", r"(?!(?:is|was)\b)@?[A-Za-z0-9._-]{3,32}"
                      r"(?<![.])"),
    "AGE": _age_spans,
    "UK_NATIONAL_HEALTH_SERVICE_NUMBER": _cued(r"\bNHS|\bhealth service", r"\b\d{3}[ -]?\d{3}[ -]?\d{4}\b",
                                               lambda t: nhs.is_valid(_digits(t))),
    "UK_NATIONAL_INSURANCE_NUMBER": _pattern(r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b",
                                             _ni),
    "UK_UNIQUE_TAXPAYER_REFERENCE_NUMBER": _cued(r"\bUTR|\bunique taxpayer reference|\btax reference",
                                                 r"\b\d{5} ?\d{5}\b"),
    "CA_SOCIAL_INSURANCE_NUMBER": _pattern(r"\b\d{3}[ -]\d{3}[ -]\d{3}\b", lambda t: sin.is_valid(_digits(t))),
    "CA_HEALTH_NUMBER": _cued(r"\bhealth (?:card|insurance)|\bhealth number|\bOHIP|\bMSP|\bRAMQ|\bcarte soleil",
                              r"\b\d{4}[ -]?\d{3}[ -]?\d{3}(?:[ -]?[A-Z]{2})?\b"),
    "NAME": _person_names,
    "ADDRESS": _addresses,
}
assert set(_FINDERS) == set(ENTITY_TYPES)
# Types found only next to the words that name them: where one overlaps another type's match of the same length
# (a passport number that is also a valid ITIN, an NHS number that is also a phone number), the named type wins.
_NAMED = frozenset({
    "CREDIT_DEBIT_CARD_CVV", "CREDIT_DEBIT_CARD_EXPIRY", "SWIFT_CODE", "US_BANK_ROUTING_NUMBER",
    "US_BANK_ACCOUNT_NUMBER", "US_PASSPORT_NUMBER", "DRIVER_ID", "LICENSE_PLATE", "AWS_SECRET_KEY", "PASSWORD", "PIN",
    "USERNAME", "UK_NATIONAL_HEALTH_SERVICE_NUMBER", "UK_UNIQUE_TAXPAYER_REFERENCE_NUMBER", "CA_HEALTH_NUMBER",
})




def find(text: str, types: Iterable[str]) -> list[Entity]:
    """The entities of ``types`` in ``text``, left to right, none overlapping (the longest wins)."""
    spans = [Entity(kind, text[start:end], start, end) for kind in types for start, end in _FINDERS[kind](text)]
    return non_overlapping(spans)


def non_overlapping(entities: list[Entity]) -> list[Entity]:
    """The longest of overlapping entities (then a named type, then the earliest), left to right."""
    chosen: list[Entity] = []
    for entity in sorted(entities, key=lambda e: (-(e.end - e.start), e.type not in _NAMED, e.start)):
        if all(entity.end <= other.start or entity.start >= other.end for other in chosen):
            chosen.append(entity)
    return sorted(chosen, key=lambda e: e.start)


def compile_regex(pattern: str) -> Any:
    """A custom regex compiled by RE2, whose matching time grows linearly with the text (a pattern that backtracks
    catastrophically under Python's ``re`` cannot stall the server); ``re2.error`` when RE2 cannot parse it
    (lookarounds and backreferences are not supported)."""
    options = re2.Options()
    options.log_errors = False
    return re2.compile(pattern, options)


@dataclass(frozen=True)
class CustomRegex:
    """A custom regex of the sensitive information policy (compiled by :func:`compile_regex`)."""

    name: str
    pattern: Any

    def find(self, text: str) -> list[Entity]:
        return [Entity(self.name, m.group(), m.start(), m.end()) for m in self.pattern.finditer(text) if m.group()]
