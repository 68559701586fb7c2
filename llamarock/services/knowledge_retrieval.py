"""Retrieval over knowledge bases (bedrock-agent-runtime): Retrieve, RetrieveAndGenerate(+Stream) and Rerank.

Retrieve embeds the query with the knowledge base's model and searches its vector store (HYBRID or SEMANTIC, with
metadata filters); RetrieveAndGenerate retrieves, builds the prompt and generates through the runtime's Converse use
case, and keeps follow-up sessions in the database; the prompt and the citations' spans are ``bedrock/rag.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import secrets
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

from llamarock.bedrock import rag
from llamarock.bedrock.guardrails import GuardrailRequest, text_block
from llamarock.context import ModelName
from llamarock.errors import ResourceNotFoundException, ValidationException
from llamarock.knowledge import filters, parsers
from llamarock.knowledge.store import Hit
from llamarock.services.guardrail_runtime import CallGuard, GuardrailRuntime
from llamarock.services.invocation import Invocation, Resolved
from llamarock.services.knowledge import KnowledgeService, document_location, new_id
from llamarock.storage.knowledge import RagSession

__all__ = ["RERANK_EMBEDDER", "RERANK_MODELS", "RagSession", "RetrievalService", "text_deltas"]

RERANK_MODELS = ("amazon.rerank-v1:0", "cohere.rerank-v3-5:0")
# The embedding model whose vectors the local reranker compares (the embedded default serves it).
RERANK_EMBEDDER = "amazon.titan-embed-text-v2:0"


class RetrievalService:
    """Retrieve, RetrieveAndGenerate(+Stream) and Rerank over :class:`KnowledgeService`'s knowledge bases."""

    def __init__(self, kbs: KnowledgeService, guardrails: GuardrailRuntime | None = None) -> None:
        self.kbs = kbs
        self.guardrails = guardrails
        self.store = kbs.store
        self.embeddings = kbs.embeddings
        self.invocations = kbs.invocations
        self.settings = kbs.settings

    # ------------------------------------------------------------------------------------------- Retrieve

    def guard(self, region: str, configuration: dict[str, Any] | None, operation: str) -> CallGuard | None:
        """The guardrail a knowledge-base call names (``guardrailConfiguration``: guardrailId, guardrailVersion), to
        check its query (INPUT) and its answer (OUTPUT); None when it names none."""
        if not configuration:
            return None
        if self.guardrails is None:
            raise ValidationException("This server runs no guardrails; remove the guardrailConfiguration.")
        request = GuardrailRequest(configuration.get("guardrailId", ""), configuration.get("guardrailVersion", ""))
        return self.guardrails.call(region, request, operation, beyond=False)

    async def retrieve(self, region: str, kb_id: str, query: str, configuration: dict[str, Any] | None,
                       guardrail: dict[str, Any] | None = None) -> tuple[list[dict[str, Any]], str | None]:
        """Retrieve's ``retrievalResults`` for ``query``, and its ``guardrailAction`` when a guardrail is named:
        INTERVENED (and no results) when the guardrail intervenes on the query, else NONE."""
        guard = self.guard(region, guardrail, "Retrieve")
        if guard is not None and await guard.check_input([text_block(query)]) is not None:
            return [], "INTERVENED"
        kb = await asyncio.to_thread(self.kbs.kb_in, region, kb_id, usable=True)
        search = (configuration or {}).get("vectorSearchConfiguration") or {}
        if search.get("implicitFilterConfiguration"):
            raise ValidationException(
                "implicitFilterConfiguration is not supported by llamarock (it asks a model to write the filter). "
                "Pass an explicit vectorSearchConfiguration.filter instead."
            )
        filter_ = search.get("filter")
        if filter_ is not None:
            try:
                filters.validate(filter_)
            except ValueError as error:
                raise ValidationException(f"retrievalConfiguration.vectorSearchConfiguration.filter: {error}") \
                    from error
        k = int(search.get("numberOfResults", 5))
        search_type = search.get("overrideSearchType", "HYBRID")
        vector = (await self.kbs.embed_texts(kb, [query]))[0]
        vectors = await asyncio.to_thread(self.kbs.vectors_of, kb)
        reranking = search.get("rerankingConfiguration")
        wanted = k
        if reranking:
            wanted = max(k, int((reranking.get("bedrockRerankingConfiguration") or {}).get(
                "numberOfRerankedResults", k)) * 2)
        hits = await asyncio.to_thread(vectors.search, kb.kb_id, query, vector, wanted, search_type, filter_)
        results = [_result(hit) for hit in hits]
        if reranking:
            order = await self._rerank_scores(query, [hit.text for hit in hits])
            results = [dict(results[i], score=score) for i, score in order][:k]
        return results[:k], (None if guard is None else "NONE")

    # ------------------------------------------------------------------------------------------- Rerank

    async def _rerank_scores(self, query: str, texts: Sequence[str]) -> list[tuple[int, float]]:
        """Indexes of ``texts`` by relevance to ``query``, best first, with a score in [0, 1]: the default
        embedder's cosine similarity, fused with BM25 over the candidates (see docs/knowledge-bases.md)."""
        embedded = await self.embeddings.embed(RERANK_EMBEDDER, [query, *texts])
        return rag.rerank_scores(query, list(texts), embedded.vectors[0], embedded.vectors[1:])

    async def rerank(self, queries: list[dict[str, Any]], sources: list[dict[str, Any]],
                     configuration: dict[str, Any]) -> list[dict[str, Any]]:
        """Rerank's ``results``."""
        model = ((configuration.get("bedrockRerankingConfiguration") or {}).get("modelConfiguration") or {})
        model_arn = model.get("modelArn", "")
        if not any(known in model_arn for known in RERANK_MODELS):
            raise ValidationException(
                f"The reranking model {model_arn} is not served. Use one of: "
                + ", ".join(f"arn:aws:bedrock:<region>::foundation-model/{m}" for m in RERANK_MODELS) + "."
            )
        if len(queries) != 1:
            raise ValidationException("Rerank takes exactly one query.")
        texts = []
        for source in sources:
            inline = source.get("inlineDocumentSource") or {}
            if inline.get("type") == "JSON":
                import json

                texts.append(json.dumps(inline.get("jsonDocument"), sort_keys=True))
            else:
                texts.append(str((inline.get("textDocument") or {}).get("text", "")))
        top = (configuration.get("bedrockRerankingConfiguration") or {}).get("numberOfResults", len(texts))
        order = await self._rerank_scores(queries[0]["textQuery"]["text"], texts)
        return [{"index": index, "relevanceScore": score} for index, score in order[:top]]

    # ------------------------------------------------------------------------------------------- RetrieveAndGenerate

    async def session(self, session_id: str | None) -> RagSession:
        if session_id is None:
            return RagSession(f"{new_id().lower()}-{secrets.token_hex(8)}")
        found = await asyncio.to_thread(self.store.session, session_id)
        if found is None:
            raise ResourceNotFoundException(
                f"The session {session_id} was not found. Leave sessionId out to start a session, then pass the "
                "sessionId the response returns for follow-up questions."
            )
        return found

    async def sources(self, region: str, params: dict[str, Any], query: str,
                      turns: Sequence[tuple[str, str]]) -> tuple[list[rag.Source], str, dict[str, Any]]:
        """The retrieved sources, the model ARN and the generation configuration of a RetrieveAndGenerate call."""
        configuration = params["retrieveAndGenerateConfiguration"]
        kind = configuration["type"]
        if kind == "KNOWLEDGE_BASE":
            kb_config = configuration.get("knowledgeBaseConfiguration")
            if not kb_config:
                raise ValidationException(
                    "retrieveAndGenerateConfiguration.type KNOWLEDGE_BASE needs knowledgeBaseConfiguration "
                    "(knowledgeBaseId and modelArn)."
                )
            if kb_config.get("orchestrationConfiguration", {}).get("queryTransformationConfiguration"):
                raise ValidationException(
                    "orchestrationConfiguration.queryTransformationConfiguration (query decomposition) is not "
                    "supported by llamarock; leave it out."
                )
            results, _ = await self.retrieve(region, kb_config["knowledgeBaseId"], rag.retrieval_query(query, turns),
                                             kb_config.get("retrievalConfiguration"))
            found = [rag.Source(r["content"].get("text", ""), _reference(r)) for r in results]
            return found, kb_config["modelArn"], kb_config.get("generationConfiguration") or {}
        external = configuration.get("externalSourcesConfiguration")
        if not external:
            raise ValidationException(
                "retrieveAndGenerateConfiguration.type EXTERNAL_SOURCES needs externalSourcesConfiguration "
                "(modelArn and sources)."
            )
        found = []
        for source in external["sources"]:
            if source["sourceType"] == "S3":
                uri = (source.get("s3Location") or {}).get("uri", "")
                name, data = uri.rsplit("/", 1)[-1], await self.kbs.read_uri(uri)
                location: dict[str, Any] = {"type": "S3", "s3Location": {"uri": uri}}
            else:
                byte = source.get("byteContent") or {}
                if not byte:
                    raise ValidationException("A BYTE_CONTENT source needs byteContent (identifier, contentType, "
                                              "data).")
                extension = mimetypes.guess_extension(byte["contentType"]) or ".txt"
                name = byte["identifier"] if parsers.is_supported(byte["identifier"]) else "source" + extension
                data = byte["data"]
                location = {"type": "CUSTOM", "customDocumentLocation": {"id": byte["identifier"]}}
            try:
                parsed = await asyncio.to_thread(parsers.parse, name, data)
            except parsers.ParseError as error:
                raise ValidationException(f"The external source {name} could not be read: {error}") from error
            text = parsed.text
            found.append(rag.Source(text, {"content": {"type": "TEXT", "text": text}, "location": location}))
        return found, external["modelArn"], external.get("generationConfiguration") or {}

    def rag_guard(self, region: str, params: dict[str, Any], operation: str) -> CallGuard | None:
        """The guardrail of a RetrieveAndGenerate call (its generationConfiguration's guardrailConfiguration)."""
        configuration = params["retrieveAndGenerateConfiguration"]
        flavour = configuration.get("knowledgeBaseConfiguration") or configuration.get(
            "externalSourcesConfiguration") or {}
        guardrail = (flavour.get("generationConfiguration") or {}).get("guardrailConfiguration")
        return self.guard(region, guardrail, operation)

    def generation(self, model_arn: str, prompt: rag.Prompt,
                   generation: dict[str, Any]) -> tuple[ModelName, dict[str, Any]]:
        """The model and the Converse request that answer ``prompt`` (a malformed modelArn is Bedrock's
        ValidationException)."""
        model = ModelName.parse(model_arn, self.settings.aliases, self.kbs.account)
        model.parsed()
        params: dict[str, Any] = {"messages": [{"role": "user", "content": [{"text": prompt.user}]}]}
        if prompt.system:
            params["system"] = [{"text": prompt.system}]
        text_config = (generation.get("inferenceConfig") or {}).get("textInferenceConfig") or {}
        inference = {name: text_config[name] for name in ("maxTokens", "temperature", "topP", "stopSequences")
                     if name in text_config}
        if inference:
            params["inferenceConfig"] = inference
        latency = (generation.get("performanceConfig") or {}).get("latency")
        if latency:
            params["performanceConfig"] = {"latency": latency}
        return model, params

    def generate(self, region: str, model: ModelName, params: dict[str, Any], request_id: str,
                 resolved: Resolved = None) -> Invocation:
        """Run the Converse request :meth:`generation` made, through the runtime's Converse use case (the same
        resolution, admission and usage as a Converse call); ``resolved`` is told the target once it is known."""
        return self.invocations.converse(model, region, params, request_id, time.monotonic(), resolved,
                                         streaming=True)

    async def remember(self, session: RagSession, query: str, answer: str) -> None:
        session.turns.append((query, answer))
        session.turns[:] = session.turns[-20:]
        await asyncio.to_thread(self.store.save_session, session, self.kbs.clock())


async def text_deltas(invocation: Invocation) -> AsyncIterator[str]:
    """The answer's text as it is generated."""
    async with contextlib.aclosing(invocation.events) as events:
        async for name, event in events:
            if name == "contentBlockDelta":
                delta = (event.get("delta") or {}).get("text")
                if delta:
                    yield delta


def _result(hit: Hit) -> dict[str, Any]:
    """One Retrieve result (KnowledgeBaseRetrievalResult) from a store hit."""
    found_metadata = dict(hit.metadata or {})
    found_metadata["x-amz-bedrock-kb-chunk-id"] = hit.chunk_id
    location = hit.location or document_location("CUSTOM", hit.document_id)
    return {
        "content": {"type": "TEXT", "text": hit.text},
        "location": location,
        "score": float(hit.score),
        "metadata": found_metadata,
        "documentId": hit.document_id,
    }


def _reference(result: dict[str, Any]) -> dict[str, Any]:
    """A Retrieve result as a citation's retrievedReference (content, location, metadata)."""
    return {key: result[key] for key in ("content", "location", "metadata") if key in result}
