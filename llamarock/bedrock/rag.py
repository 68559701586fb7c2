"""RetrieveAndGenerate's prompt and citations, pure: Bedrock's placeholders, and spans that index the output exactly.

The prompt: ``promptTemplate.textPromptTemplate`` (or Bedrock's default) with ``$search_results$`` (the retrieved
chunks, numbered from 1), ``$query$`` (the question), ``$output_format_instructions$`` (how to cite: ``[n]`` after a
sentence) and ``$conversation_history$`` (the session's earlier turns). A template without ``$query$`` gets the
question as the user's message after it, as Bedrock does.

The citations: the model is asked to mark each sentence with the numbers of the results it used. Whatever markers it
writes are taken out of the text the caller sees, and the citations index that clean text. A small model rarely
follows the instruction, so a sentence it did not mark is attributed after the fact to the retrieved chunks it shares
the most content words with (:func:`attribute`), and a sentence that shares too little with any chunk is cited with
no references, as Bedrock does for text no source supports. Spans follow Bedrock's responses: ``start`` is the index
of the part's first character in ``output.text`` and ``end`` the index of its last (inclusive), so
``output[start:end + 1] == part.text``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# The default prompt: Bedrock's default knowledge-base prompt in fewer words (a small model reads every token of it,
# and the embedded engine spends most of a RetrieveAndGenerate reading the prompt).
DEFAULT_TEMPLATE = (
    "Answer the user's question using only the search results below. If they do not contain the answer, say that "
    "you could not find an exact answer. Do not take the user's assertions as facts without checking them against "
    "the search results.\n\nSearch results:\n$search_results$\n\n$output_format_instructions$"
)

OUTPUT_FORMAT_INSTRUCTIONS = (
    "Answer in a few plain sentences. After each sentence, write the numbers of the search results it uses in "
    "square brackets, like [1] or [1][2]."
)

# The default of the external-sources flavour (EXTERNAL_SOURCES): the documents are the search results.
PLACEHOLDERS = ("$search_results$", "$query$", "$output_format_instructions$", "$conversation_history$")

# How much content a sentence must share with a chunk to be attributed to it (share of the sentence's content words).
MIN_OVERLAP = 0.2

_MARKER = re.compile(r"\s*(?:\[(\d{1,3})\]|%\[(\d{1,3})\]%|\[(?:source|Source|doc|Doc)\s*(\d{1,3})\])")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# A sentence ends at . ! ? (and closing quotes or brackets) followed by whitespace or the end, or at a line break:
# "18.02" and "e.g.x" do not end one.
_SENTENCE = re.compile(r"[^\n]+?(?:[.!?]+[\"')\]]*(?=\s|$)|(?=\n)|$)")
# Common English function words: they say nothing about where a sentence came from.
_STOP = frozenset("""a an the and or but if then than so of to in on at by for with from as is are was were be been
being it its this that these those there here which who whom whose what when where why how not no yes do does did
done can could should would may might must will shall i you he she we they them his her our your their my me us
about into over under also just only very more most such any all some each other both few many much own same too
""".split())


@dataclass(frozen=True)
class Source:
    """One retrieved chunk as the prompt numbers it (from 1) and the citations reference it: its text, and the
    retrievedReferences entry (content, location, metadata) that cites it."""

    text: str
    reference: dict[str, object]


@dataclass(frozen=True)
class Part:
    """A stretch of the output and the numbers (from 1) of the sources it is attributed to."""

    start: int
    text: str
    sources: tuple[int, ...]

    @property
    def end(self) -> int:
        """The index of the part's last character (inclusive, as Bedrock's spans)."""
        return self.start + len(self.text) - 1


@dataclass
class Prompt:
    """The system text and the user's message that run through the model."""

    system: str
    user: str
    query_in_template: bool = field(default=False)


def search_results(sources: Sequence[Source]) -> str:
    """``$search_results$``: the chunks, numbered from 1."""
    if not sources:
        return "(no search results)"
    return "\n\n".join(f"[{n}] {source.text.strip()}" for n, source in enumerate(sources, 1))


def conversation_history(turns: Sequence[tuple[str, str]]) -> str:
    """``$conversation_history$``: the session's earlier questions and answers."""
    return "\n".join(f"User: {question}\nAssistant: {answer}" for question, answer in turns)


def render(template: str | None, query: str, sources: Sequence[Source],
           turns: Sequence[tuple[str, str]] = ()) -> Prompt:
    """The prompt for ``query``: ``template`` (Bedrock's default when None) with its placeholders filled in; a
    template without ``$query$`` gets the query as the user's message."""
    chosen = template or DEFAULT_TEMPLATE
    values = {
        "$search_results$": search_results(sources),
        "$output_format_instructions$": OUTPUT_FORMAT_INSTRUCTIONS,
        "$conversation_history$": conversation_history(turns),
        "$query$": query,
    }
    # One pass, so that a chunk that happens to contain '$query$' is not expanded again.
    pattern = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))
    text = pattern.sub(lambda found: values[found[0]], chosen)
    if "$query$" in chosen:
        return Prompt("", text, query_in_template=True)
    history = conversation_history(turns)
    if history and "$conversation_history$" not in chosen:
        text += "\n\nThe conversation so far:\n" + history
    return Prompt(text, query)


def retrieval_query(query: str, turns: Sequence[tuple[str, str]], keep: int = 2) -> str:
    """What a follow-up retrieves with: the last ``keep`` questions of the session before this one (a follow-up
    such as "and its price?" names nothing by itself)."""
    earlier = [question for question, _ in turns[-keep:]]
    return " ".join([*earlier, query]) if earlier else query


def strip_markers(text: str) -> tuple[str, list[tuple[int, tuple[int, ...]]]]:
    """The output without citation markers, and where each run of markers stood in the clean text with the
    numbers it named."""
    clean: list[str] = []
    marks: list[tuple[int, tuple[int, ...]]] = []
    position = 0
    length = 0
    pending: list[int] = []
    for found in _MARKER.finditer(text):
        clean.append(text[position:found.start()])
        length += found.start() - position
        number = int(next(g for g in found.groups() if g is not None))
        if marks and marks[-1][0] == length:
            marks[-1] = (length, (*marks[-1][1], number))
        else:
            marks.append((length, (number,)))
        pending.append(number)
        position = found.end()
    clean.append(text[position:])
    return "".join(clean), marks


def sentences(text: str) -> list[tuple[int, str]]:
    """The sentences of ``text`` with their start offsets; each keeps its trailing punctuation, and the whitespace
    between sentences belongs to none."""
    found = []
    for match in _SENTENCE.finditer(text):
        stripped = match.group().strip()
        if not stripped:
            continue
        start = match.start() + (len(match.group()) - len(match.group().lstrip()))
        found.append((start, stripped))
    return found


def _content_words(text: str) -> set[str]:
    return {word.lower() for word in _WORD.findall(text) if word.lower() not in _STOP and len(word) > 1}


def attribute(sentence: str, sources: Sequence[Source], limit: int = 2) -> tuple[int, ...]:
    """The sources (numbers from 1) a sentence shares the most content words with: at most ``limit``, each sharing
    at least ``MIN_OVERLAP`` of the sentence's content words."""
    words = _content_words(sentence)
    if not words:
        return ()
    scored = []
    for number, source in enumerate(sources, 1):
        shared = len(words & _content_words(source.text)) / len(words)
        if shared >= MIN_OVERLAP:
            scored.append((shared, -number))
    scored.sort(reverse=True)
    return tuple(-negative for _, negative in scored[:limit])


def parts(output: str, marks: Sequence[tuple[int, tuple[int, ...]]], sources: Sequence[Source]) -> list[Part]:
    """The output split into sentences, each with the sources its markers named (numbers outside the sources are
    dropped) or, unmarked, those :func:`attribute` finds; consecutive sentences with the same sources are one part."""
    found: list[Part] = []
    spans = sentences(output)
    for index, (start, text) in enumerate(spans):
        end = start + len(text)
        following = spans[index + 1][0] if index + 1 < len(spans) else len(output) + 1
        named: list[int] = []
        for at, numbers in marks:
            if end <= at < following or (start < at <= end):
                named.extend(n for n in numbers if 1 <= n <= len(sources) and n not in named)
        chosen = tuple(named) if named else attribute(text, sources)
        if found and found[-1].sources == chosen:
            previous = found[-1]
            found[-1] = Part(previous.start, output[previous.start:end], chosen)
        else:
            found.append(Part(start, text, chosen))
    return found


def citations(output: str, parts_: Sequence[Part], sources: Sequence[Source]) -> list[dict[str, object]]:
    """Bedrock's ``citations`` for the parts of ``output`` (whose spans index it exactly)."""
    cited: list[dict[str, object]] = []
    for part in parts_:
        assert output[part.start:part.end + 1] == part.text
        cited.append({
            "generatedResponsePart": {"textResponsePart": {
                "text": part.text, "span": {"start": part.start, "end": part.end},
            }},
            "retrievedReferences": [sources[n - 1].reference for n in part.sources],
        })
    return cited


def answer(raw: str, sources: Sequence[Source]) -> tuple[str, list[dict[str, object]]]:
    """The text the caller sees (markers removed, whitespace trimmed) and its citations."""
    clean, marks = strip_markers(raw)
    leading = len(clean) - len(clean.lstrip())
    text = clean.strip()
    shifted = [(max(0, at - leading), numbers) for at, numbers in marks]
    return text, citations(text, parts(text, shifted, sources), sources)


# A tail of the raw output that may still become a citation marker (or the whitespace before one): held back.
_PENDING_TAIL = re.compile(r"\s*(?:(?<!\d\])%(?:\[(?:[A-Za-z]{0,6}\s*\d{0,3}\]?)?)?|\[(?:[A-Za-z]{0,6}\s*\d{0,3})?)?$")


class StreamedAnswer:
    """The output text of a stream as it is generated, markers taken out: :meth:`feed` returns what can be sent
    now, :meth:`finish` the rest and the citations, whose spans index the concatenation of everything sent."""

    def __init__(self) -> None:
        self.raw = ""
        self.sent = ""

    def feed(self, delta: str) -> str:
        self.raw += delta
        tail = _PENDING_TAIL.search(self.raw)
        safe = self.raw[: tail.start()] if tail is not None else self.raw
        clean = strip_markers(safe)[0].lstrip()
        if not clean.startswith(self.sent):  # cannot happen with complete markers; never resend
            return ""
        fresh = clean[len(self.sent):]
        self.sent += fresh
        return fresh

    def finish(self, sources: Sequence[Source]) -> tuple[str, list[dict[str, object]]]:
        """The text not sent yet, and the citations of the whole output."""
        text, cited = answer(self.raw, sources)
        if not text.startswith(self.sent):
            text = self.sent  # what the caller received is what the spans must index
            cited = citations(text, parts(text, [], sources), sources)
        rest = text[len(self.sent):]
        self.sent = text
        return rest, cited


# ------------------------------------------------------------------------------------------------------- Rerank

# Rerank's local model: the embedder's cosine similarity and BM25 over the candidates, fused convexly.
RERANK_ALPHA = 0.5
_BM25_K1, _BM25_B = 1.2, 0.75


def _terms(text: str) -> list[str]:
    return [word.lower() for word in _WORD.findall(text) if word.lower() not in _STOP]


def bm25(query: str, texts: Sequence[str]) -> list[float]:
    """Okapi BM25 (k1 1.2, b 0.75) of each text for the query, the candidates being the collection."""
    import math

    documents = [_terms(text) for text in texts]
    if not documents:
        return []
    average = sum(len(d) for d in documents) / len(documents) or 1.0
    frequency: dict[str, int] = {}
    for document in documents:
        for term in set(document):
            frequency[term] = frequency.get(term, 0) + 1
    scores = []
    for document in documents:
        counts: dict[str, int] = {}
        for term in document:
            counts[term] = counts.get(term, 0) + 1
        score = 0.0
        for term in set(_terms(query)):
            if term not in counts:
                continue
            idf = math.log(1 + (len(documents) - frequency[term] + 0.5) / (frequency[term] + 0.5))
            tf = counts[term]
            score += idf * tf * (_BM25_K1 + 1) / (tf + _BM25_K1 * (1 - _BM25_B + _BM25_B * len(document) / average))
        scores.append(score)
    return scores


def rerank_scores(query: str, texts: Sequence[str], query_vector: Sequence[float],
                  vectors: Sequence[Sequence[float]], alpha: float = RERANK_ALPHA) -> list[tuple[int, float]]:
    """Indexes of ``texts`` best first with a relevance score in 0..1: ``alpha`` × (1 + cosine) / 2 plus
    (1 − ``alpha``) × bm25 / (1 + bm25). Vectors are L2-normalised, so the cosine is their dot product."""
    lexical = bm25(query, texts)
    scored = []
    for index, vector in enumerate(vectors):
        cosine = sum(a * b for a, b in zip(query_vector, vector, strict=True))
        score = alpha * (1 + cosine) / 2 + (1 - alpha) * lexical[index] / (1 + lexical[index])
        scored.append((index, round(min(1.0, max(0.0, score)), 6)))
    scored.sort(key=lambda item: (-item[1], item[0]))
    return scored
