"""Word filters: custom words and phrases, and the managed PROFANITY list, matched as whole words, ignoring case.

A word or phrase matches where it stands alone (not inside a longer word); the spaces inside a phrase match any run of
white space. Words and phrases made of word characters are looked up token by token in a set (the text's runs of
word characters, and the phrases of up to as many tokens as the longest entry), so a list of thousands costs no more
than a list of ten; the few entries with other characters (``c++``, ``a$$``) are one compiled alternation. The managed
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
    """One alternation of ``words``, each standing alone: the word-boundary checks sit outside the alternation (one
    per group of entries that need them), so most positions of a text fail at once."""
    groups: dict[tuple[bool, bool], list[str]] = {}
    for word in sorted({w.strip() for w in words if w.strip()}, key=len, reverse=True):
        body = r"\s+".join(re.escape(piece) for piece in word.split())
        groups.setdefault((re.match(r"\w", word) is not None, re.search(r"\w$", word) is not None), []).append(body)
    before, after = r"(?<!\w)", r"(?!\w)"
    parts = [(before if left else "") + "(?:" + "|".join(bodies) + ")" + (after if right else "")
             for (left, right), bodies in groups.items()]
    if not parts:
        return None
    return re.compile("|".join(parts), re.IGNORECASE)


_TOKEN = re.compile(r"\w+")


class WordList:
    """A list of words and phrases, matched as whole words regardless of case."""

    def __init__(self, words: Iterable[str]) -> None:
        self.words = [w for w in words]
        self._keys: dict[str, str] = {}
        others = []
        for word in self.words:
            tokens = _TOKEN.findall(word)
            if tokens and " ".join(tokens) == " ".join(word.split()):
                self._keys.setdefault(" ".join(tokens).casefold(), word)
            elif word.strip():
                others.append(word)
        self._longest = max((key.count(" ") + 1 for key in self._keys), default=0)
        self._others = {" ".join(w.split()).casefold(): w for w in others}
        self._pattern = _pattern(others)

    def find(self, text: str) -> list[WordMatch]:
        """Every match in ``text``, left to right (overlapping entries: the longest, then the earliest)."""
        found: list[WordMatch] = []
        if self._keys:
            tokens = list(_TOKEN.finditer(text))
            folded = [t.group().casefold() for t in tokens]
            index = 0
            while index < len(tokens):
                for size in range(min(self._longest, len(tokens) - index), 0, -1):
                    last = index + size - 1
                    if size > 1 and not all(text[tokens[i].end():tokens[i + 1].start()].isspace()
                                            for i in range(index, last)):
                        continue
                    key = " ".join(folded[index:last + 1])
                    if key in self._keys:
                        start, end = tokens[index].start(), tokens[last].end()
                        found.append(WordMatch(self._keys[key], text[start:end], start, end))
                        index = last
                        break
                index += 1
        if self._pattern is not None:
            for match in self._pattern.finditer(text):
                key = self._others.get(" ".join(match.group().split()).casefold(), match.group())
                found.append(WordMatch(key, match.group(), match.start(), match.end()))
            found.sort(key=lambda m: (m.start, -m.end))
            found = [m for i, m in enumerate(found)
                     if not any(o.start <= m.start and m.end <= o.end and (o.start, o.end) != (m.start, m.end)
                                for o in found[max(0, i - 3):i + 3])]
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
