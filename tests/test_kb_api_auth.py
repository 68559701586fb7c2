"""Knowledge-base operations under ``--auth enforce``: IAM actions on the knowledge base's ARN, and
RetrieveAndGenerate needing bedrock:Retrieve on its knowledge base and bedrock:InvokeModel on its model, as on AWS.
A fake-engine server (generation is not what is tested here); the real embedder and SQLite store."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from conftest import Server, start_server, stop_server
from test_auth_server import create

REGION = "us-west-2"
MODEL_ARN = f"arn:aws:bedrock:{REGION}::foundation-model/meta.llama3-1-8b-instruct-v1:0"


@pytest.fixture(scope="module")
def enforced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    tmp = tmp_path_factory.mktemp("kb-enforce")
    server = start_server(tmp, "--engine", "fake", "--auth", "enforce")
    yield server, tmp / "data"
    stop_server(server)


def client(service: str, server: Server, key: dict[str, str]) -> Any:
    return boto3.client(service, region_name=REGION, endpoint_url=server.url, aws_access_key_id=key["accessKeyId"],
                        aws_secret_access_key=key["secretAccessKey"], config=Config(retries={"max_attempts": 1}))


def policy(tmp: Path, name: str, statements: list[dict[str, Any]]) -> str:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps({"Version": "2012-10-17", "Statement": statements}))
    return str(path)


def test_knowledge_base_permissions(enforced: tuple[Server, Path], tmp_path: Path) -> None:
    server, data = enforced
    admin_key = create(data, "kb-admin", "--policy",
                       policy(tmp_path, "admin", [{"Effect": "Allow", "Action": "bedrock:*", "Resource": "*"}]))
    agent = client("bedrock-agent", server, admin_key)
    kb = agent.create_knowledge_base(
        name="secured", roleArn="arn:aws:iam::000000000000:role/kb",
        knowledgeBaseConfiguration={"type": "VECTOR", "vectorKnowledgeBaseConfiguration": {
            "embeddingModelArn": f"arn:aws:bedrock:{REGION}::foundation-model/amazon.titan-embed-text-v2:0"}},
    )["knowledgeBase"]
    kb_id, kb_arn = kb["knowledgeBaseId"], kb["knowledgeBaseArn"]
    deadline = time.monotonic() + 60
    while agent.get_knowledge_base(knowledgeBaseId=kb_id)["knowledgeBase"]["status"] != "ACTIVE":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    ds = agent.create_data_source(knowledgeBaseId=kb_id, name="inline",
                                  dataSourceConfiguration={"type": "CUSTOM"})["dataSource"]["dataSourceId"]
    agent.ingest_knowledge_base_documents(knowledgeBaseId=kb_id, dataSourceId=ds, documents=[{"content": {
        "dataSourceType": "CUSTOM", "custom": {"customDocumentIdentifier": {"id": "d1"}, "sourceType": "IN_LINE",
                                               "inlineContent": {"type": "TEXT", "textContent": {
                                                   "data": "The vault code is changed every Monday."}}}}}])

    rag = {"type": "KNOWLEDGE_BASE", "knowledgeBaseConfiguration": {"knowledgeBaseId": kb_id, "modelArn": MODEL_ARN}}
    generate = {"Effect": "Allow", "Action": ["bedrock:RetrieveAndGenerate", "bedrock:InvokeModel"], "Resource": "*"}
    other_kb = {"Effect": "Allow", "Action": "bedrock:Retrieve",
                "Resource": f"arn:aws:bedrock:{REGION}:000000000000:knowledge-base/OTHERKB000"}
    outsider = client("bedrock-agent-runtime", server,
                      create(data, "kb-outsider", "--policy", policy(tmp_path, "outsider", [generate, other_kb])))
    with pytest.raises(ClientError) as error:
        outsider.retrieve(knowledgeBaseId=kb_id, retrievalQuery={"text": "vault"})
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"
    assert kb_arn in error.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as error:
        outsider.retrieve_and_generate(input={"text": "When does the vault code change?"},
                                       retrieveAndGenerateConfiguration=rag)
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"
    assert f"bedrock:Retrieve on resource: {kb_arn}" in error.value.response["Error"]["Message"]
    with pytest.raises(ClientError) as error:
        client("bedrock-agent", server, create(data, "kb-outsider-2", "--policy", policy(
            tmp_path, "outsider2", [other_kb]))).get_knowledge_base(knowledgeBaseId=kb_id)
    assert error.value.response["Error"]["Code"] == "AccessDeniedException"

    this_kb = dict(other_kb, Resource=kb_arn)
    reader = client("bedrock-agent-runtime", server,
                    create(data, "kb-reader", "--policy", policy(tmp_path, "reader", [generate, this_kb])))
    found = reader.retrieve(knowledgeBaseId=kb_id, retrievalQuery={"text": "vault"})["retrievalResults"]
    assert found[0]["location"] == {"type": "CUSTOM", "customDocumentLocation": {"id": "d1"}}
    answered = reader.retrieve_and_generate(input={"text": "When does the vault code change?"},
                                            retrieveAndGenerateConfiguration=rag)
    assert answered["output"]["text"]

    no_model = {"Effect": "Allow", "Action": "bedrock:RetrieveAndGenerate", "Resource": "*"}
    retriever = client("bedrock-agent-runtime", server,
                       create(data, "kb-no-model", "--policy", policy(tmp_path, "nomodel", [no_model, this_kb])))
    with pytest.raises(ClientError) as error:
        retriever.retrieve_and_generate(input={"text": "When?"}, retrieveAndGenerateConfiguration=rag)
    assert "bedrock:InvokeModel" in error.value.response["Error"]["Message"]

    # The generation is an invocation of the model: it counts against the caller's requests per minute for it (the
    # second call within the minute is throttled, before anything is generated) and shows in the model's metrics.
    def invocations() -> float:
        text = urllib.request.urlopen(f"{server.url}/metrics", timeout=30).read().decode()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("bedrock_invocations_total{") and "meta.llama3-1-8b-instruct-v1:0" in line)

    before = invocations()
    streamed = dict(generate, Action=[*generate["Action"], "bedrock:RetrieveAndGenerateStream"])
    limited = client("bedrock-agent-runtime", server, create(data, "kb-limited", "--rpm", "1", "--policy", policy(
        tmp_path, "limited", [streamed, this_kb])))
    assert limited.retrieve_and_generate(input={"text": "When does the vault code change?"},
                                         retrieveAndGenerateConfiguration=rag)["output"]["text"]
    assert invocations() == before + 1
    for call in (limited.retrieve_and_generate, limited.retrieve_and_generate_stream):
        with pytest.raises(ClientError) as error:
            call(input={"text": "And the door code?"}, retrieveAndGenerateConfiguration=rag)
        assert error.value.response["Error"]["Code"] == "ThrottlingException"
    assert invocations() == before + 1
