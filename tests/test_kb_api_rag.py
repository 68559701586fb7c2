"""bedrock/rag.py: RetrieveAndGenerate's prompt templating, citation markers, post-hoc attribution, spans, the
streamed answer, and the local reranker's scoring (pure functions, no server)."""

from __future__ import annotations

import random

import pytest

from llamarock.bedrock import rag

SOURCES = [
    rag.Source("The Falcon X200 drone flies for 42 minutes on one battery.", {"content": {"text": "falcon"}}),
    rag.Source("The Harbor lighthouse was built in 1871 from granite.", {"content": {"text": "harbor"}}),
]


def test_template_placeholders() -> None:
    prompt = rag.render("R: $search_results$ Q: $query$ F: $output_format_instructions$ H: $conversation_history$",
                        "when was it built?", SOURCES, [("first?", "answer one")])
    assert prompt.system == ""
    assert "[1] The Falcon X200" in prompt.user and "[2] The Harbor" in prompt.user
    assert "Q: when was it built?" in prompt.user
    assert rag.OUTPUT_FORMAT_INSTRUCTIONS in prompt.user
    assert "User: first?\nAssistant: answer one" in prompt.user


def test_template_without_query_makes_the_question_the_user_message() -> None:
    prompt = rag.render(None, "how long does it fly?", SOURCES)
    assert prompt.user == "how long does it fly?"
    assert "[1] The Falcon X200" in prompt.system and "$" not in prompt.system


def test_a_chunk_containing_a_placeholder_is_not_expanded() -> None:
    tricky = [rag.Source("costs $query$ dollars", {})]
    prompt = rag.render("$search_results$ / $query$", "q", tricky)
    assert prompt.user == "[1] costs $query$ dollars / q"


def test_markers_are_removed_and_cite_their_sources() -> None:
    text, citations = rag.answer("  The drone flies 42 minutes [1]. The lighthouse dates from 1871.[2]  ", SOURCES)
    assert text == "The drone flies 42 minutes. The lighthouse dates from 1871."
    assert len(citations) == 2
    for citation in citations:
        part = citation["generatedResponsePart"]["textResponsePart"]  # type: ignore[index]
        assert text[part["span"]["start"]:part["span"]["end"] + 1] == part["text"]
    assert citations[0]["retrievedReferences"] == [SOURCES[0].reference]
    assert citations[1]["retrievedReferences"] == [SOURCES[1].reference]


def test_unmarked_sentences_are_attributed_by_overlap() -> None:
    _, citations = rag.answer("It was built in 1871 from granite. I like cheese.", SOURCES)
    assert [c["retrievedReferences"] for c in citations] == [[SOURCES[1].reference], []]


def test_markers_outside_the_sources_are_dropped() -> None:
    _, citations = rag.answer("The drone flies 42 minutes [7].", SOURCES)
    assert citations[0]["retrievedReferences"] == [SOURCES[0].reference]  # attributed by overlap instead


@pytest.mark.parametrize("seed", range(20))
def test_spans_index_the_text_exactly(seed: int) -> None:
    generator = random.Random(seed)
    pieces = ["The drone", " flies", " 42 minutes", " [1]", ".", " Granite", " lighthouse", "[2]", "!", "\n",
              " 1871", " built", "?", " %[1]%", "  "]
    raw = "".join(generator.choice(pieces) for _ in range(30))
    text, citations = rag.answer(raw, SOURCES)
    covered = 0
    for citation in citations:
        part = citation["generatedResponsePart"]["textResponsePart"]  # type: ignore[index]
        assert text[part["span"]["start"]:part["span"]["end"] + 1] == part["text"]
        assert part["span"]["start"] >= covered
        covered = part["span"]["end"] + 1
    assert "[1]" not in text and "[2]" not in text


@pytest.mark.parametrize("seed", range(20))
def test_the_stream_sends_exactly_the_cited_text(seed: int) -> None:
    generator = random.Random(seed)
    raw = "  The drone flies 42 minutes [1]. It was built in 1871 [2][1]. Done %[2]% \n"
    cuts = sorted(generator.sample(range(1, len(raw)), 8))
    deltas = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)], strict=True)]
    streamed = rag.StreamedAnswer()
    sent = "".join(streamed.feed(delta) for delta in deltas)
    rest, citations = streamed.finish(SOURCES)
    sent += rest
    assert sent == rag.answer(raw, SOURCES)[0]
    for citation in citations:
        part = citation["generatedResponsePart"]["textResponsePart"]  # type: ignore[index]
        assert sent[part["span"]["start"]:part["span"]["end"] + 1] == part["text"]


def test_follow_up_retrieval_query_carries_the_session() -> None:
    assert rag.retrieval_query("and its price?", [("tell me about the X200", "...")]) == \
        "tell me about the X200 and its price?"
    assert rag.retrieval_query("q", []) == "q"


def test_rerank_scores_prefer_lexical_and_semantic_matches() -> None:
    texts = ["apples and pears", "the lighthouse lamp", "drone batteries"]
    vectors = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    order = rag.rerank_scores("lighthouse lamp range", texts, [0.0, 1.0], vectors)
    assert [index for index, _ in order] == [1, 2, 0]
    assert all(0 <= score <= 1 for _, score in order)
