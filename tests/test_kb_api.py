"""Knowledge bases end to end through unmodified boto3 (bedrock-agent, bedrock-agent-runtime), LangChain's and
llama-index's Bedrock KB retrievers, and the spec's Knowledge Bases example, against one real server: the embedded
SmolLM2 model, the embedded all-MiniLM-L6-v2 embedder, and the embedded SQLite store.

Documents reach the data source's bucket by being written into the blob folder (``<data_dir>/blobs/<bucket>/<key>``),
which is what S3 uploads to this server write too. The server is restarted once, by the last test, in the middle of
an ingestion job.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from conftest import DUMMY_CREDENTIALS, Server, start_server, stop_server

REGION = "us-west-2"
EMBEDDING_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/amazon.titan-embed-text-v2:0"
MODEL_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/meta.llama3-1-8b-instruct-v1:0"
ROLE_ARN = "arn:aws:iam::000000000000:role/kb-role"
MAX_DOCUMENT_BYTES = 100_000

DOCUMENTS = {
    "docs/falcon.txt": "The Falcon X200 drone has a flight time of 42 minutes and a top speed of 68 km/h. "
    "Its battery is a 5200 mAh lithium polymer pack that charges in 90 minutes.",
    "docs/harbor.md": "# Harbor Lighthouse\n\nThe Harbor lighthouse was built in 1871 from granite. Its lamp "
    "is visible 24 nautical miles out to sea, and the keeper's cottage is now a museum.",
    "docs/orchard.html": "<html><body><h1>Orchard care</h1><p>Apple trees are pruned in late winter. "
    "Pears need cross-pollination from a second variety planted nearby.</p></body></html>",
}
METADATA = {
    "docs/falcon.txt": {"metadataAttributes": {"genre": "tech", "year": 2023, "tags": ["drone", "battery"]}},
    "docs/harbor.md": {"metadataAttributes": {"genre": "history", "year": 1871, "tags": ["sea", "museum"]}},
    "docs/orchard.html": {"metadataAttributes": {"genre": "garden", "year": 2019, "tags": ["trees"]}},
}


class Holder:
    """The module's server (which the restart test replaces) and the PostgreSQL its RDS knowledge bases use."""

    def __init__(self, tmp: Path, pg_url: str) -> None:
        self.tmp = tmp
        self.pg_url = pg_url
        self.server = self._start()

    def _start(self) -> Server:
        return start_server(self.tmp, "--knowledge-max-document-bytes", str(MAX_DOCUMENT_BYTES),
                            "--knowledge-rds-url", self.pg_url)

    def restart(self) -> None:
        stop_server(self.server)
        self.server = self._start()

    @property
    def blobs(self) -> Path:
        return self.tmp / "data" / "blobs"

    def agent(self) -> Any:
        return self.server.client("bedrock-agent", REGION)

    def runtime(self) -> Any:
        return self.server.client("bedrock-agent-runtime", REGION)


@pytest.fixture(scope="module")
def kb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Holder]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns that XDG_RUNTIME_DIR is unset
        import pgserver  # PostgreSQL with pgvector, from its wheel

        postgres = pgserver.get_server(tmp_path_factory.mktemp("pg"), cleanup_mode="stop")
    try:
        holder = Holder(tmp_path_factory.mktemp("kb"), postgres.get_uri())
        yield holder
        stop_server(holder.server)
    finally:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            postgres.cleanup()


def put(holder: Holder, bucket: str, key: str, data: bytes | str) -> None:
    path = holder.blobs / bucket / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)


def wait_for(check: Any, what: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def create_kb(agent: Any, name: str, **extra: Any) -> str:
    created = agent.create_knowledge_base(
        name=name, roleArn=ROLE_ARN,
        knowledgeBaseConfiguration={"type": "VECTOR",
                                    "vectorKnowledgeBaseConfiguration": {"embeddingModelArn": EMBEDDING_ARN}},
        **extra,
    )["knowledgeBase"]
    assert created["status"] == "CREATING"
    kb_id: str = created["knowledgeBaseId"]

    def active() -> bool:
        kb = agent.get_knowledge_base(knowledgeBaseId=kb_id)["knowledgeBase"]
        assert kb["status"] != "FAILED", kb
        return bool(kb["status"] == "ACTIVE")

    wait_for(active, "the knowledge base to be ACTIVE")
    return kb_id


def create_s3_source(agent: Any, kb_id: str, bucket: str, name: str = "docs", **extra: Any) -> str:
    source = agent.create_data_source(
        knowledgeBaseId=kb_id, name=name,
        dataSourceConfiguration={"type": "S3", "s3Configuration": {"bucketArn": f"arn:aws:s3:::{bucket}"}},
        **extra,
    )["dataSource"]
    assert source["status"] == "AVAILABLE"
    return str(source["dataSourceId"])


def ingest(agent: Any, kb_id: str, ds_id: str) -> dict[str, Any]:
    job = agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id)["ingestionJob"]
    job_id = job["ingestionJobId"]

    def done() -> dict[str, Any] | None:
        found: dict[str, Any] = agent.get_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id,
                                                        ingestionJobId=job_id)["ingestionJob"]
        return found if found["status"] in ("COMPLETE", "FAILED", "STOPPED") else None

    finished: dict[str, Any] = wait_for(done, "the ingestion job")
    assert finished["status"] == "COMPLETE", finished
    return finished


def error_code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


@pytest.fixture(scope="module")
def corpus(kb_server: Holder) -> dict[str, str]:
    """A knowledge base with the three documents (and their sidecars) ingested from bucket ``kb-docs``."""
    for key, text in DOCUMENTS.items():
        put(kb_server, "kb-docs", key, text)
        put(kb_server, "kb-docs", key + ".metadata.json", json.dumps(METADATA[key]))
    agent = kb_server.agent()
    kb_id = create_kb(agent, "corpus")
    ds_id = create_s3_source(agent, kb_id, "kb-docs")
    job = ingest(agent, kb_id, ds_id)
    stats = job["statistics"]
    assert stats["numberOfDocumentsScanned"] == 3
    assert stats["numberOfNewDocumentsIndexed"] == 3
    assert stats["numberOfMetadataDocumentsScanned"] == 3
    assert stats["numberOfDocumentsFailed"] == 0
    return {"kb": kb_id, "ds": ds_id}


# ------------------------------------------------------------------------------------------------------- routing


def test_unimplemented_agent_operations_say_so(kb_server: Holder) -> None:
    with pytest.raises(ClientError) as error:
        kb_server.agent().list_agents()
    assert "does not implement the bedrock-agent operation ListAgents" in str(error.value)
    with pytest.raises(ClientError) as error:
        kb_server.runtime().get_session(sessionIdentifier="abc")
    assert "bedrock-agent-runtime operation GetSession" in str(error.value)


# ------------------------------------------------------------------------------------------------------- CRUD


def test_knowledge_base_and_data_source_crud(kb_server: Holder) -> None:
    agent = kb_server.agent()
    token = "t" * 40
    kb_id = create_kb(agent, "crud", clientToken=token, tags={"team": "search"})
    again = agent.create_knowledge_base(
        name="crud", roleArn=ROLE_ARN, clientToken=token, tags={"team": "search"},
        knowledgeBaseConfiguration={"type": "VECTOR",
                                    "vectorKnowledgeBaseConfiguration": {"embeddingModelArn": EMBEDDING_ARN}},
    )["knowledgeBase"]
    assert again["knowledgeBaseId"] == kb_id  # same token, same request: the same knowledge base
    kb = agent.get_knowledge_base(knowledgeBaseId=kb_id)["knowledgeBase"]
    assert kb["knowledgeBaseArn"] == f"arn:aws:bedrock:{REGION}:000000000000:knowledge-base/{kb_id}"
    assert "storageConfiguration" not in kb
    assert agent.list_tags_for_resource(resourceArn=kb["knowledgeBaseArn"])["tags"] == {"team": "search"}
    with pytest.raises(ClientError) as error:
        create_kb(agent, "crud")
    assert error_code(error) == "ConflictException"

    names = {s["name"] for s in agent.list_knowledge_bases()["knowledgeBaseSummaries"]}
    assert "crud" in names

    updated = agent.update_knowledge_base(
        knowledgeBaseId=kb_id, name="crud-renamed", roleArn=ROLE_ARN, description="renamed",
        knowledgeBaseConfiguration=kb["knowledgeBaseConfiguration"],
    )["knowledgeBase"]
    assert updated["name"] == "crud-renamed" and updated["description"] == "renamed"

    chunking = {"chunkingStrategy": "FIXED_SIZE",
                "fixedSizeChunkingConfiguration": {"maxTokens": 200, "overlapPercentage": 10}}
    ds_id = create_s3_source(agent, kb_id, "crud-bucket", dataDeletionPolicy="RETAIN",
                             vectorIngestionConfiguration={"chunkingConfiguration": chunking})
    source = agent.get_data_source(knowledgeBaseId=kb_id, dataSourceId=ds_id)["dataSource"]
    assert source["vectorIngestionConfiguration"]["chunkingConfiguration"] == chunking
    assert source["dataDeletionPolicy"] == "RETAIN"
    custom = agent.create_data_source(knowledgeBaseId=kb_id, name="inline",
                                      dataSourceConfiguration={"type": "CUSTOM"})["dataSource"]
    listed = agent.list_data_sources(knowledgeBaseId=kb_id)["dataSourceSummaries"]
    assert {s["dataSourceId"] for s in listed} == {ds_id, custom["dataSourceId"]}
    first = agent.list_data_sources(knowledgeBaseId=kb_id, maxResults=1)
    rest = agent.list_data_sources(knowledgeBaseId=kb_id, maxResults=1, nextToken=first["nextToken"])
    assert [s["dataSourceId"] for s in first["dataSourceSummaries"] + rest["dataSourceSummaries"]] == \
        [s["dataSourceId"] for s in listed] and "nextToken" not in rest
    renamed = agent.update_data_source(
        knowledgeBaseId=kb_id, dataSourceId=ds_id, name="docs-2", dataDeletionPolicy="DELETE",
        dataSourceConfiguration=source["dataSourceConfiguration"],
    )["dataSource"]
    assert renamed["name"] == "docs-2" and renamed["dataDeletionPolicy"] == "DELETE"
    assert agent.delete_data_source(knowledgeBaseId=kb_id, dataSourceId=ds_id)["status"] == "DELETING"
    with pytest.raises(ClientError) as error:
        agent.get_data_source(knowledgeBaseId=kb_id, dataSourceId=ds_id)
    assert error_code(error) == "ResourceNotFoundException"

    assert agent.delete_knowledge_base(knowledgeBaseId=kb_id)["status"] == "DELETING"

    def gone() -> bool:
        try:
            agent.get_knowledge_base(knowledgeBaseId=kb_id)
        except ClientError as error:
            return bool(error.response["Error"]["Code"] == "ResourceNotFoundException")
        return False

    wait_for(gone, "the knowledge base to be deleted")


# ------------------------------------------------------------------------------------------------------- runtime


def test_retrieve_finds_the_right_document(kb_server: Holder, corpus: dict[str, str]) -> None:
    runtime = kb_server.runtime()
    for search_type in ("HYBRID", "SEMANTIC"):
        results = runtime.retrieve(
            knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "How long can the drone fly?"},
            retrievalConfiguration={"vectorSearchConfiguration": {"numberOfResults": 2,
                                                                  "overrideSearchType": search_type}},
        )["retrievalResults"]
        assert 1 <= len(results) <= 2
        best = results[0]
        assert best["location"] == {"type": "S3", "s3Location": {"uri": "s3://kb-docs/docs/falcon.txt"}}
        assert "42 minutes" in best["content"]["text"]
        assert best["metadata"]["genre"] == "tech" and best["metadata"]["year"] == 2023
        assert best["metadata"]["x-amz-bedrock-kb-source-uri"] == "s3://kb-docs/docs/falcon.txt"
        assert best["metadata"]["x-amz-bedrock-kb-data-source-id"] == corpus["ds"]
        assert best["metadata"]["x-amz-bedrock-kb-chunk-id"]
        assert 0 < best["score"] <= 1
        assert "nextToken" not in runtime.retrieve(
            knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "drone"},
            retrievalConfiguration={"vectorSearchConfiguration": {"numberOfResults": 100}})
    # Every result fits one response, so the paginator stops after one page, and a made-up token is refused.
    pages = list(runtime.get_paginator("retrieve").paginate(knowledgeBaseId=corpus["kb"],
                                                            retrievalQuery={"text": "drone"}))
    assert len(pages) == 1 and pages[0]["retrievalResults"]
    with pytest.raises(ClientError) as refused:
        runtime.retrieve(knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "drone"}, nextToken="abc")
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "nextToken" in refused.value.response["Error"]["Message"]


def test_guardrails_on_retrieval_and_generation(kb_server: Holder, corpus: dict[str, str]) -> None:
    """guardrailConfiguration on Retrieve and RetrieveAndGenerate(+Stream): the query is checked before anything is
    retrieved or generated, the answer before it is sent (a blocked answer has no citations)."""
    control = kb_server.server.client("bedrock", REGION)
    words = control.create_guardrail(
        name="no-bananas", blockedInputMessaging="Sorry, no bananas.", blockedOutputsMessaging="Answer withheld.",
        wordPolicyConfig={"wordsConfig": [{"text": "banana"}]})
    answers = control.create_guardrail(  # blocks any answer with a letter in it, and no query
        name="no-answers", blockedInputMessaging="Query blocked.", blockedOutputsMessaging="Answer withheld.",
        sensitiveInformationPolicyConfig={"regexesConfig": [{
            "name": "letters", "pattern": "[A-Za-z]", "action": "BLOCK", "inputEnabled": False}]})
    runtime = kb_server.runtime()

    def guard(made: dict[str, Any]) -> dict[str, str]:
        return {"guardrailId": made["guardrailId"], "guardrailVersion": "DRAFT"}

    stopped = runtime.retrieve(knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "How long can the banana fly?"},
                               guardrailConfiguration=guard(words))
    assert stopped["guardrailAction"] == "INTERVENED" and stopped["retrievalResults"] == []
    passed = runtime.retrieve(knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "battery life"},
                              guardrailConfiguration=guard(words))
    assert passed["guardrailAction"] == "NONE" and passed["retrievalResults"]
    assert "guardrailAction" not in runtime.retrieve(knowledgeBaseId=corpus["kb"],
                                                     retrievalQuery={"text": "battery life"})

    def rag(made: dict[str, Any]) -> dict[str, Any]:
        return {"type": "KNOWLEDGE_BASE", "knowledgeBaseConfiguration": {
            "knowledgeBaseId": corpus["kb"], "modelArn": MODEL_ARN, "generationConfiguration": {
                "guardrailConfiguration": guard(made),
                "inferenceConfig": {"textInferenceConfig": {"maxTokens": 24, "temperature": 0}}}}}

    blocked = runtime.retrieve_and_generate(input={"text": "How long can the banana fly?"},
                                            retrieveAndGenerateConfiguration=rag(words))
    assert blocked["output"]["text"] == "Sorry, no bananas."
    assert blocked["guardrailAction"] == "INTERVENED" and blocked["citations"] == []
    withheld = runtime.retrieve_and_generate(input={"text": "What is the battery life?"},
                                             retrieveAndGenerateConfiguration=rag(answers))
    assert withheld["output"]["text"] == "Answer withheld."
    assert withheld["guardrailAction"] == "INTERVENED" and withheld["citations"] == []
    events = list(runtime.retrieve_and_generate_stream(input={"text": "What is the battery life?"},
                                                       retrieveAndGenerateConfiguration=rag(answers))["stream"])
    assert "".join(e["output"]["text"] for e in events if "output" in e) == "Answer withheld."
    assert [e["guardrail"]["action"] for e in events if "guardrail" in e] == ["INTERVENED"]
    assert not [e for e in events if "citation" in e]
    fine = runtime.retrieve_and_generate(input={"text": "What is the battery life?"},
                                         retrieveAndGenerateConfiguration=rag(words))
    assert fine["guardrailAction"] == "NONE" and fine["output"]["text"]


def test_rds_knowledge_base_on_postgresql(kb_server: Holder, corpus: dict[str, str]) -> None:
    """storageConfiguration RDS: the vectors go to PostgreSQL with pgvector (knowledge_rds_url)."""
    agent = kb_server.agent()
    storage = {"type": "RDS", "rdsConfiguration": {
        "resourceArn": "arn:aws:rds:us-west-2:000000000000:cluster:kb", "databaseName": "postgres",
        "credentialsSecretArn": "arn:aws:secretsmanager:us-west-2:000000000000:secret:kb",
        "tableName": "bedrock_kb", "fieldMapping": {"primaryKeyField": "id", "vectorField": "embedding",
                                                   "textField": "chunks", "metadataField": "metadata"}}}
    kb_id = create_kb(agent, "on-postgres", storageConfiguration=storage)
    assert agent.get_knowledge_base(knowledgeBaseId=kb_id)["knowledgeBase"]["storageConfiguration"] == storage
    ds_id = create_s3_source(agent, kb_id, "kb-docs")
    assert ingest(agent, kb_id, ds_id)["statistics"]["numberOfNewDocumentsIndexed"] == 3
    runtime = kb_server.runtime()
    for search_type in ("HYBRID", "SEMANTIC"):
        results = runtime.retrieve(
            knowledgeBaseId=kb_id, retrievalQuery={"text": "pruning apple trees"},
            retrievalConfiguration={"vectorSearchConfiguration": {
                "numberOfResults": 3, "overrideSearchType": search_type,
                "filter": {"orAll": [{"equals": {"key": "genre", "value": "garden"}},
                                     {"greaterThan": {"key": "year", "value": 2020}}]}}},
        )["retrievalResults"]
        found = [r["location"]["s3Location"]["uri"] for r in results]
        assert found[0] == "s3://kb-docs/docs/orchard.html"
        assert set(found) == {"s3://kb-docs/docs/orchard.html", "s3://kb-docs/docs/falcon.txt"}
    agent.delete_knowledge_base(knowledgeBaseId=kb_id)


FILTERS: list[tuple[dict[str, Any], set[str]]] = [
    ({"equals": {"key": "genre", "value": "tech"}}, {"falcon"}),
    ({"notEquals": {"key": "genre", "value": "tech"}}, {"harbor", "orchard"}),
    ({"greaterThan": {"key": "year", "value": 2019}}, {"falcon"}),
    ({"greaterThanOrEquals": {"key": "year", "value": 2019}}, {"falcon", "orchard"}),
    ({"lessThan": {"key": "year", "value": 2019}}, {"harbor"}),
    ({"lessThanOrEquals": {"key": "year", "value": 2019}}, {"harbor", "orchard"}),
    ({"in": {"key": "genre", "value": ["history", "garden"]}}, {"harbor", "orchard"}),
    ({"notIn": {"key": "genre", "value": ["history", "garden"]}}, {"falcon"}),
    ({"startsWith": {"key": "genre", "value": "gar"}}, {"orchard"}),
    ({"listContains": {"key": "tags", "value": "museum"}}, {"harbor"}),
    ({"stringContains": {"key": "genre", "value": "isto"}}, {"harbor"}),
    ({"andAll": [{"equals": {"key": "genre", "value": "tech"}}, {"lessThan": {"key": "year", "value": 2000}}]},
     set()),
    ({"orAll": [{"equals": {"key": "genre", "value": "tech"}}, {"lessThan": {"key": "year", "value": 2000}}]},
     {"falcon", "harbor"}),
]


@pytest.mark.parametrize("search_filter, expected", FILTERS, ids=[next(iter(f)) for f, _ in FILTERS])
def test_every_filter_operator(kb_server: Holder, corpus: dict[str, str], search_filter: dict[str, Any],
                               expected: set[str]) -> None:
    results = kb_server.runtime().retrieve(
        knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "information"},
        retrievalConfiguration={"vectorSearchConfiguration": {"numberOfResults": 10, "filter": search_filter}},
    )["retrievalResults"]
    found = {r["location"]["s3Location"]["uri"].rsplit("/", 1)[-1].split(".")[0] for r in results}
    assert found == expected


def check_citations(text: str, citations: list[dict[str, Any]]) -> None:
    assert citations, "an answer has citations"
    for citation in citations:
        part = citation["generatedResponsePart"]["textResponsePart"]
        span = part["span"]
        assert text[span["start"]:span["end"] + 1] == part["text"]  # end is inclusive, as on Bedrock
        for reference in citation["retrievedReferences"]:
            assert reference["content"]["text"]
            assert reference["location"]["type"] == "S3"
            assert reference["metadata"]["x-amz-bedrock-kb-source-uri"] == reference["location"]["s3Location"]["uri"]


def test_retrieve_and_generate_with_citations_and_a_session(kb_server: Holder, corpus: dict[str, str]) -> None:
    runtime = kb_server.runtime()
    configuration = {"type": "KNOWLEDGE_BASE", "knowledgeBaseConfiguration": {
        "knowledgeBaseId": corpus["kb"], "modelArn": MODEL_ARN,
        "retrievalConfiguration": {"vectorSearchConfiguration": {"numberOfResults": 2}},
        "generationConfiguration": {"inferenceConfig": {"textInferenceConfig": {"maxTokens": 32, "temperature": 0}}},
    }}
    response = runtime.retrieve_and_generate(input={"text": "What is the flight time of the Falcon X200 drone?"},
                                             retrieveAndGenerateConfiguration=configuration)
    text = response["output"]["text"]
    assert text
    check_citations(text, response["citations"])
    cited = {ref["location"]["s3Location"]["uri"] for c in response["citations"] for ref in c["retrievedReferences"]}
    assert cited <= {"s3://kb-docs/docs/falcon.txt", "s3://kb-docs/docs/harbor.md", "s3://kb-docs/docs/orchard.html"}
    session = response["sessionId"]
    follow_up = runtime.retrieve_and_generate(input={"text": "And how long does its battery take to charge?"},
                                              sessionId=session, retrieveAndGenerateConfiguration=configuration)
    assert follow_up["sessionId"] == session
    check_citations(follow_up["output"]["text"], follow_up["citations"])



def test_retrieve_and_generate_stream(kb_server: Holder, corpus: dict[str, str]) -> None:
    response = kb_server.runtime().retrieve_and_generate_stream(
        input={"text": "When was the Harbor lighthouse built?"},
        retrieveAndGenerateConfiguration={"type": "KNOWLEDGE_BASE", "knowledgeBaseConfiguration": {
            "knowledgeBaseId": corpus["kb"], "modelArn": MODEL_ARN,
            "generationConfiguration": {
                "promptTemplate": {"textPromptTemplate": "Sources:\n$search_results$\n\nQuestion: $query$\n"
                                                         "$output_format_instructions$"},
                "inferenceConfig": {"textInferenceConfig": {"maxTokens": 32, "temperature": 0}},
            },
        }},
    )
    assert response["sessionId"]
    text = ""
    citations = []
    for event in response["stream"]:
        if "output" in event:
            assert not citations, "citations come after the text"
            text += event["output"]["text"]
        elif "citation" in event:
            citations.append(event["citation"]["citation"])
            assert event["citation"]["generatedResponsePart"] == event["citation"]["citation"][
                "generatedResponsePart"]
    assert text
    check_citations(text, citations)


def test_external_sources(kb_server: Holder) -> None:
    put(kb_server, "external", "notes/specs.txt", "The Model K kettle boils 1.7 litres in 150 seconds.")
    runtime = kb_server.runtime()
    for source in (
        {"sourceType": "S3", "s3Location": {"uri": "s3://external/notes/specs.txt"}},
        {"sourceType": "BYTE_CONTENT", "byteContent": {"identifier": "specs.txt", "contentType": "text/plain",
                                                        "data": b"The Model K kettle boils 1.7 litres in 150 s."}},
    ):
        response = runtime.retrieve_and_generate(
            input={"text": "How much water does the Model K kettle hold?"},
            retrieveAndGenerateConfiguration={"type": "EXTERNAL_SOURCES", "externalSourcesConfiguration": {
                "modelArn": MODEL_ARN, "sources": [source],
                "generationConfiguration": {"inferenceConfig": {"textInferenceConfig": {"maxTokens": 16}}},
            }},
        )
        text = response["output"]["text"]
        assert text
        for citation in response["citations"]:
            span = citation["generatedResponsePart"]["textResponsePart"]["span"]
            assert text[span["start"]:span["end"] + 1] == citation["generatedResponsePart"]["textResponsePart"][
                "text"]


def test_rerank(kb_server: Holder) -> None:
    documents = ["Pears need a second variety nearby for pollination.",
                 "The lighthouse lamp is visible 24 nautical miles out.",
                 "Drone batteries charge in 90 minutes."]
    results = kb_server.runtime().rerank(
        queries=[{"type": "TEXT", "textQuery": {"text": "how far can you see the lighthouse light"}}],
        sources=[{"type": "INLINE", "inlineDocumentSource": {"type": "TEXT", "textDocument": {"text": d}}}
                 for d in documents],
        rerankingConfiguration={"type": "BEDROCK_RERANKING_MODEL", "bedrockRerankingConfiguration": {
            "numberOfResults": 2,
            "modelConfiguration": {"modelArn": f"arn:aws:bedrock:{REGION}::foundation-model/amazon.rerank-v1:0"},
        }},
    )["results"]
    assert results[0]["index"] == 1 and len(results) == 2
    assert results[0]["relevanceScore"] >= results[1]["relevanceScore"]


# ------------------------------------------------------------------------------------------------------- documents


def test_custom_documents(kb_server: Holder, corpus: dict[str, str]) -> None:
    agent = kb_server.agent()
    ds_id = agent.create_data_source(knowledgeBaseId=corpus["kb"], name="inline",
                                     dataSourceConfiguration={"type": "CUSTOM"})["dataSource"]["dataSourceId"]
    document = {"content": {"dataSourceType": "CUSTOM", "custom": {
        "customDocumentIdentifier": {"id": "memo-1"}, "sourceType": "IN_LINE",
        "inlineContent": {"type": "TEXT", "textContent": {"data": "The quarterly offsite moves to Lisbon in May."}},
    }}, "metadata": {"type": "IN_LINE_ATTRIBUTE", "inlineAttributes": [
        {"key": "genre", "value": {"type": "STRING", "stringValue": "memo"}}]}}
    as_bytes = {"content": {"dataSourceType": "CUSTOM", "custom": {
        "customDocumentIdentifier": {"id": "memo-2"}, "sourceType": "IN_LINE",
        "inlineContent": {"type": "BYTE", "byteContent": {
            "mimeType": "text/html", "data": b"<p>The cafeteria serves paella on Fridays.</p>"}},
    }}}
    details = agent.ingest_knowledge_base_documents(knowledgeBaseId=corpus["kb"], dataSourceId=ds_id,
                                                    documents=[document, as_bytes])["documentDetails"]
    assert [d["status"] for d in details] == ["INDEXED", "INDEXED"]
    identifier = {"dataSourceType": "CUSTOM", "custom": {"id": "memo-1"}}
    got = agent.get_knowledge_base_documents(knowledgeBaseId=corpus["kb"], dataSourceId=ds_id,
                                             documentIdentifiers=[identifier])["documentDetails"]
    assert got[0]["status"] == "INDEXED"
    listed = agent.list_knowledge_base_documents(knowledgeBaseId=corpus["kb"], dataSourceId=ds_id)
    assert [d["identifier"]["custom"]["id"] for d in listed["documentDetails"]] == ["memo-1", "memo-2"]
    paella = kb_server.runtime().retrieve(knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "paella day"},
                                          retrievalConfiguration={"vectorSearchConfiguration": {"numberOfResults": 1}})
    assert "paella" in paella["retrievalResults"][0]["content"]["text"]
    results = kb_server.runtime().retrieve(
        knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "Where is the offsite?"},
        retrievalConfiguration={"vectorSearchConfiguration": {"numberOfResults": 1,
                                                              "filter": {"equals": {"key": "genre",
                                                                                    "value": "memo"}}}},
    )["retrievalResults"]
    assert results[0]["location"] == {"type": "CUSTOM", "customDocumentLocation": {"id": "memo-1"}}
    too_big = dict(document)
    too_big["content"] = {"dataSourceType": "CUSTOM", "custom": {
        "customDocumentIdentifier": {"id": "big"}, "sourceType": "IN_LINE",
        "inlineContent": {"type": "TEXT", "textContent": {"data": "word " * (MAX_DOCUMENT_BYTES // 4)}}}}
    with pytest.raises(ClientError) as error:
        agent.ingest_knowledge_base_documents(knowledgeBaseId=corpus["kb"], dataSourceId=ds_id, documents=[too_big])
    assert error_code(error) == "ValidationException"
    assert f"{MAX_DOCUMENT_BYTES} bytes" in str(error.value)
    agent.delete_knowledge_base_documents(knowledgeBaseId=corpus["kb"], dataSourceId=ds_id,
                                          documentIdentifiers=[identifier])
    got = agent.get_knowledge_base_documents(knowledgeBaseId=corpus["kb"], dataSourceId=ds_id,
                                             documentIdentifiers=[identifier])["documentDetails"]
    assert got[0]["status"] == "NOT_FOUND"
    agent.delete_data_source(knowledgeBaseId=corpus["kb"], dataSourceId=ds_id)


# ------------------------------------------------------------------------------------------------------- bad input


def test_bad_input_gets_the_declared_errors(kb_server: Holder, corpus: dict[str, str]) -> None:
    runtime, agent = kb_server.runtime(), kb_server.agent()
    with pytest.raises(ClientError) as error:
        runtime.retrieve(knowledgeBaseId="NOSUCHKB00", retrievalQuery={"text": "x"})
    assert error_code(error) == "ResourceNotFoundException"
    assert error.value.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    with pytest.raises(ClientError) as error:
        agent.get_knowledge_base(knowledgeBaseId="NOSUCHKB00")
    assert error_code(error) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as error:
        runtime.retrieve(knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "x"}, retrievalConfiguration={
            "vectorSearchConfiguration": {"filter": {"in": {"key": "genre", "value": "not-a-list"}}}})
    assert error_code(error) == "ValidationException"
    assert "filter.in" in str(error.value)
    with pytest.raises(ClientError) as error:
        runtime.retrieve(knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "x"}, retrievalConfiguration={
            "vectorSearchConfiguration": {"implicitFilterConfiguration": {
                "metadataAttributes": [{"key": "genre", "type": "STRING", "description": "genre"}],
                "modelArn": MODEL_ARN}}})
    assert error_code(error) == "ValidationException" and "implicitFilterConfiguration" in str(error.value)
    with pytest.raises(ClientError) as error:  # an unknown guardrail: never answered unchecked
        runtime.retrieve(knowledgeBaseId=corpus["kb"], retrievalQuery={"text": "x"},
                         guardrailConfiguration={"guardrailId": "abc", "guardrailVersion": "1"})
    assert error_code(error) == "ResourceNotFoundException" and "guardrail" in str(error.value)
    with pytest.raises(ClientError) as error:
        runtime.retrieve_and_generate(input={"text": "x"}, retrieveAndGenerateConfiguration={
            "type": "KNOWLEDGE_BASE",
            "knowledgeBaseConfiguration": {"knowledgeBaseId": "NOSUCHKB00", "modelArn": MODEL_ARN}})
    assert error_code(error) == "ResourceNotFoundException"
    with pytest.raises(ClientError) as error:
        agent.create_data_source(knowledgeBaseId=corpus["kb"], name="web",
                                 dataSourceConfiguration={"type": "WEB", "webConfiguration": {
                                     "sourceConfiguration": {"urlConfiguration": {
                                         "seedUrls": [{"url": "https://example.com"}]}}}})
    assert error_code(error) == "ValidationException" and "WEB" in str(error.value)


def test_incremental_reingestion_and_failed_files(kb_server: Holder) -> None:
    agent = kb_server.agent()
    bucket = "kb-incremental"
    for name in ("one", "two", "three"):
        put(kb_server, bucket, f"{name}.txt", f"Document {name} talks about topic {name}.")
    kb_id = create_kb(agent, "incremental")
    ds_id = create_s3_source(agent, kb_id, bucket)
    first = ingest(agent, kb_id, ds_id)["statistics"]
    assert (first["numberOfDocumentsScanned"], first["numberOfNewDocumentsIndexed"]) == (3, 3)

    put(kb_server, bucket, "one.txt", "Document one now talks about sailing boats.")  # modified
    (kb_server.blobs / bucket / "two.txt").unlink()  # deleted
    put(kb_server, bucket, "four.txt", "Document four is new and talks about volcanoes.")  # added
    put(kb_server, bucket, "three.txt.metadata.json", json.dumps({"metadataAttributes": {"level": 3}}))
    put(kb_server, bucket, "broken.pdf", b"%PDF-1.7\nthis is not really a pdf")  # corrupt
    put(kb_server, bucket, "huge.txt", "x" * (MAX_DOCUMENT_BYTES + 1))  # too large
    job = ingest(agent, kb_id, ds_id)
    second = job["statistics"]
    assert second["numberOfDocumentsScanned"] == 5  # one, three, four, broken, huge
    assert second["numberOfNewDocumentsIndexed"] == 1
    assert second["numberOfModifiedDocumentsIndexed"] == 1
    assert second["numberOfDocumentsDeleted"] == 1
    assert second["numberOfMetadataDocumentsScanned"] == 1
    assert second["numberOfMetadataDocumentsModified"] == 1
    assert second["numberOfDocumentsFailed"] == 2
    reasons = " ".join(job["failureReasons"])
    assert "broken.pdf" in reasons and "huge.txt" in reasons and str(MAX_DOCUMENT_BYTES) in reasons

    results = kb_server.runtime().retrieve(
        knowledgeBaseId=kb_id, retrievalQuery={"text": "topic two"},
        retrievalConfiguration={"vectorSearchConfiguration": {"numberOfResults": 10}})["retrievalResults"]
    uris = [r["location"]["s3Location"]["uri"] for r in results]
    assert f"s3://{bucket}/two.txt" not in uris
    assert sorted(uris) == sorted(f"s3://{bucket}/{n}.txt" for n in ("one", "three", "four"))
    assert any(r["metadata"].get("level") == 3 for r in results)

    third = ingest(agent, kb_id, ds_id)["statistics"]  # nothing changed: nothing re-indexed
    assert third["numberOfNewDocumentsIndexed"] == third["numberOfModifiedDocumentsIndexed"] == 0
    assert third["numberOfDocumentsDeleted"] == 0
    jobs = agent.list_ingestion_jobs(knowledgeBaseId=kb_id, dataSourceId=ds_id)["ingestionJobSummaries"]
    assert len(jobs) == 3 and all(j["status"] == "COMPLETE" for j in jobs)


# ------------------------------------------------------------------------------------------------------- frameworks


def framework_env(monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    for key, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(key, value)


def test_langchain_retriever(kb_server: Holder, corpus: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from langchain_aws.retrievers import AmazonKnowledgeBasesRetriever

    framework_env(monkeypatch, kb_server.server)
    retriever = AmazonKnowledgeBasesRetriever(
        knowledge_base_id=corpus["kb"], region_name=REGION,
        retrieval_config={"vectorSearchConfiguration": {"numberOfResults": 2}},
    )
    documents = retriever.invoke("When was the lighthouse built?")
    assert documents and "1871" in documents[0].page_content
    assert documents[0].metadata["location"]["s3Location"]["uri"] == "s3://kb-docs/docs/harbor.md"


def test_llama_index_retriever(kb_server: Holder, corpus: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    from llama_index.retrievers.bedrock import AmazonKnowledgeBasesRetriever

    framework_env(monkeypatch, kb_server.server)
    retriever = AmazonKnowledgeBasesRetriever(
        knowledge_base_id=corpus["kb"], region_name=REGION,
        aws_access_key_id=DUMMY_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=DUMMY_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        retrieval_config={"vectorSearchConfiguration": {"numberOfResults": 2}},
    )
    nodes = retriever.retrieve("Which fruit trees need cross-pollination?")
    assert nodes and "Pears" in nodes[0].node.get_content()


SPEC_HEADING = "With Amazon Bedrock Knowledge Bases"
# A verbatim copy of the spec's sample, used when the spec is not next to the checkout (test_spec_examples' rule).
SPEC_SAMPLE = """# Example of using Llama with Knowledge Base for RAG
knowledge_base_id = "your-kb-id"
model_id = "meta.llama3-1-70b-instruct-v1:0"

response = bedrock_agent_runtime.retrieve_and_generate(
    input={
        'text': 'What are the key technical specifications mentioned in the documentation?'
    },
    retrieveAndGenerateConfiguration={
        'type': 'KNOWLEDGE_BASE',
        'knowledgeBaseConfiguration': {
            'knowledgeBaseId': knowledge_base_id,
            'modelArn': f'arn:aws:bedrock:us-west-2::foundation-model/{model_id}',
            'generationConfiguration': {
                'inferenceConfig': {
                    'textInferenceConfig': {
                        'temperature': 0.5,
                        'maxTokens': 512
                    }
                }
            }
        }
    }
)
"""


def test_spec_knowledge_base_example(kb_server: Holder, corpus: dict[str, str], tmp_path: Path) -> None:
    """The spec's "With Amazon Bedrock Knowledge Bases" sample, unchanged but for its placeholder id; it names a
    ``bedrock_agent_runtime`` client it does not create, so the client is created first, as the spec's other samples
    create theirs."""
    from test_spec_examples import example_env, extract_example, spec_file

    path = spec_file()
    sample = SPEC_SAMPLE
    if path is not None:
        sample = extract_example(path.read_text(encoding="utf-8"), SPEC_HEADING)
        assert sample == SPEC_SAMPLE, "the embedded copy of the spec's sample drifted"
    assert 'knowledge_base_id = "your-kb-id"' in sample
    code = (
        "import boto3\nbedrock_agent_runtime = boto3.client('bedrock-agent-runtime', region_name='us-west-2')\n"
        + sample.replace('"your-kb-id"', repr(corpus["kb"]))
        + "print(response['output']['text'])\nprint(len(response['citations']))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=example_env(kb_server.server), cwd=tmp_path,
                            capture_output=True, encoding="utf-8", timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()


# ------------------------------------------------------------------------------------------------------- restart


def test_restart_mid_ingestion_resumes_without_duplicates(kb_server: Holder) -> None:
    agent = kb_server.agent()
    bucket = "kb-restart"
    count = 150
    for n in range(count):
        put(kb_server, bucket, f"doc-{n:03d}.txt",
            f"Record {n}: the unique marker word is zebra{n:03d}. " + "Filler sentence about nothing. " * 15)
    kb_id = create_kb(agent, "restart")
    ds_id = create_s3_source(agent, kb_id, bucket)
    job_id = agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id)["ingestionJob"]["ingestionJobId"]

    def partly_done() -> bool:
        job = agent.get_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id, ingestionJobId=job_id)
        scanned = job["ingestionJob"]["statistics"]["numberOfDocumentsScanned"]
        assert job["ingestionJob"]["status"] != "COMPLETE", "the job finished before the restart; add documents"
        return bool(scanned >= 5)

    wait_for(partly_done, "the job to be part done")
    kb_server.restart()
    agent = kb_server.agent()

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = agent.get_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id,
                                                      ingestionJobId=job_id)["ingestionJob"]
        return job if job["status"] == "COMPLETE" else None

    job = wait_for(finished, "the resumed job", timeout=180)
    stats = job["statistics"]
    assert stats["numberOfDocumentsScanned"] == count
    assert stats["numberOfNewDocumentsIndexed"] == count
    documents = agent.list_knowledge_base_documents(knowledgeBaseId=kb_id, dataSourceId=ds_id,
                                                    maxResults=1000)["documentDetails"]
    assert len(documents) == count and all(d["status"] == "INDEXED" for d in documents)
    results = kb_server.runtime().retrieve(
        knowledgeBaseId=kb_id, retrievalQuery={"text": "zebra007"},
        retrievalConfiguration={"vectorSearchConfiguration": {
            "numberOfResults": 20, "filter": {"equals": {"key": "x-amz-bedrock-kb-source-uri",
                                                         "value": f"s3://{bucket}/doc-007.txt"}}}},
    )["retrievalResults"]
    chunk_ids = [r["metadata"]["x-amz-bedrock-kb-chunk-id"] for r in results]
    texts = [r["content"]["text"] for r in results]
    assert chunk_ids and len(set(chunk_ids)) == len(chunk_ids) and len(set(texts)) == len(texts)
    # StopIngestionJob: a second data source on the same bucket has every document to index; stopped at once, its
    # job ends STOPPED between documents, having scanned fewer than all.
    second = create_s3_source(agent, kb_id, bucket, name="second")
    job_id = agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=second)["ingestionJob"]["ingestionJobId"]
    stopping = agent.stop_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=second, ingestionJobId=job_id)
    assert stopping["ingestionJob"]["status"] in ("STOPPING", "STOPPED")

    def stopped() -> dict[str, Any] | None:
        found: dict[str, Any] = agent.get_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=second,
                                                        ingestionJobId=job_id)["ingestionJob"]
        return found if found["status"] == "STOPPED" else None

    assert wait_for(stopped, "the job to stop")["statistics"]["numberOfDocumentsScanned"] < count
    with pytest.raises(ClientError) as error:
        agent.stop_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=second, ingestionJobId=job_id)
    assert error_code(error) == "ConflictException"
