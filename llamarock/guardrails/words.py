"""Word filters: custom words and phrases, and the managed PROFANITY list, matched as whole words, ignoring case.

A word or phrase matches where it stands alone (not inside a longer word); the spaces inside a phrase match any run of
white space. One compiled alternation per list keeps a 1,000-character text well under a millisecond. The managed
PROFANITY list is the word list that ships with the ``better-profanity`` package (its data file, read once; the
package's own matching, which also rewrites leetspeak, is not used).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources

from llamarock.errors import ConfigError


@dataclass(frozen=True)
class WordMatch:
    """One word found: ``key`` is the configured word (custom) or the list's word (managed), ``text`` as written."""

    key: str
    text: str
    start: int
    end: int


def _pattern(words: Iterable[str]) -> re.Pattern[str] | None:
    parts = []
    for word in sorted({w.strip() for w in words if w.strip()}, key=len, reverse=True):
        body = r"\s+".join(re.escape(piece) for piece in word.split())
        left = r"(?<!\w)" if re.match(r"\w", word) else ""
        right = r"(?!\w)" if re.search(r"\w$", word) else ""
        parts.append(f"{left}{body}{right}")
    if not parts:
        return None
    return re.compile("|".join(parts), re.IGNORECASE)


class WordList:
    """A list of words and phrases, matched as whole words regardless of case."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = [w for w in words]
        self._keys = {" ".join(w.split()).casefold(): w for w in self.words}
        self._pattern = _pattern(self.words)

    def find(self, text: str) -> list[WordMatch]:
        """Every match in ``text``, left to right."""
        if self._pattern is None:
            return []
        found = []
        for match in self._pattern.finditer(text):
            key = self._keys.get(" ".join(match.group().split()).casefold(), match.group())
            found.append(WordMatch(key, match.group(), match.start(), match.end()))
        return found


@cache
def profanity() -> WordList:
    """The managed PROFANITY list (better-profanity's word list)."""
    try:
        data = resources.files("better_profanity").joinpath("profanity_wordlist.txt").read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise ConfigError(
            "The managed PROFANITY word list comes from the better-profanity package, which is not installed: "
            "pip install 'better-profanity==0.7.0'."
        ) from error
    return WordList(line.strip() for line in data.splitlines() if line.strip() and not line.startswith("#"))
