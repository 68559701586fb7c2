"""GuardrailService in-process, on real SQLite and the real embedding service (all-MiniLM-L6-v2): ``apply`` gives
ApplyGuardrail's output body for a guardrail named by id or ARN and version, numbered versions keep answering as they
were made, an updated DRAFT answers with its new policies, unknown guardrails and versions are Bedrock's
ResourceNotFoundException, and what was stored survives a restart (a new service on the same database)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from llamarock.errors import ResourceNotFoundException, ValidationException
from llamarock.services.embeddings import EmbeddingService
from llamarock.services.guardrails import GuardrailService
from llamarock.services.tagging import TaggingService
from llamarock.settings import Settings
from llamarock.storage.db import Database
from llamarock.storage.guardrails import GuardrailStore
from llamarock.storage.tags import TagStore

REGION = "us-west-2"
ACCOUNT = "000000000000"
MESSAGES = {"blockedInputMessaging": "No input like that.", "blockedOutputsMessaging": "No output like that."}


def service(tmp_path: Path, embeddings: EmbeddingService | None = None) -> GuardrailService:
    database = Database.at(tmp_path)
    guardrails = GuardrailService(GuardrailStore(database), TaggingService(TagStore(database), ACCOUNT), embeddings,
                                  ACCOUNT)
    asyncio.run(guardrails.load())
    return guardrails


def text(value: str) -> list[dict[str, Any]]:
    return [{"text": {"text": value}}]


def test_apply_by_id_arn_and_version(tmp_path: Path) -> None:
    guardrails = service(tmp_path)

    async def scenario() -> None:
        created = await guardrails.create(REGION, {
            "name": "support", **MESSAGES,
            "wordPolicyConfig": {"wordsConfig": [{"text": "globex"}]},
            "sensitiveInformationPolicyConfig": {"piiEntitiesConfig": [{"type": "EMAIL", "action": "ANONYMIZE"}]},
        })
        gid = created.guardrail_id
        version = await guardrails.create_version(REGION, gid)
        await guardrails.update(REGION, gid, {"name": "support", **MESSAGES,
                                              "wordPolicyConfig": {"wordsConfig": [{"text": "initech"}]}})

        blocked = await guardrails.apply(REGION, gid, version.version, "INPUT", text("Is Globex cheaper?"))
        assert blocked["action"] == "GUARDRAIL_INTERVENED"
        assert blocked["outputs"] == [{"text": "No input like that."}]
        out = await guardrails.apply(REGION, created.arn, version.version, "OUTPUT", text("Globex is cheaper."))
        assert out["outputs"] == [{"text": "No output like that."}]
        masked = await guardrails.apply(REGION, gid, "1", "INPUT", text("mail me at a@b.com"))
        assert masked["outputs"] == [{"text": "mail me at {EMAIL}"}]

        # The DRAFT changed; version 1 did not.
        assert (await guardrails.apply(REGION, gid, "DRAFT", "INPUT", text("Is Globex cheaper?")))["action"] == "NONE"
        assert (await guardrails.apply(REGION, gid, None, "INPUT", text("Initech?")))["action"] == \
            "GUARDRAIL_INTERVENED"
        assert (await guardrails.resolve(REGION, gid, "1")).blocked_input == "No input like that."

        for identifier, number in ((gid, "2"), ("nosuchguardrail", "DRAFT"), (gid.upper() + "x", None)):
            with pytest.raises(ResourceNotFoundException, match="does not exist"):
                await guardrails.apply(REGION, identifier, number, "INPUT", text("x"))
        with pytest.raises(ResourceNotFoundException):
            await guardrails.resolve("us-east-1", gid)
        with pytest.raises(ResourceNotFoundException):
            await guardrails.resolve(REGION, f"arn:aws:bedrock:{REGION}:111111111111:guardrail/{gid}")

    asyncio.run(scenario())
    # A restart reads every version back.
    again = service(tmp_path)
    listed = again.listed(REGION)
    assert [g.name for g in listed] == ["support"]
    assert [g.version for g in again.listed(REGION, listed[0].guardrail_id)] == ["DRAFT", "1"]
    result = asyncio.run(again.apply(REGION, listed[0].guardrail_id, "1", "INPUT", text("globex")))
    assert result["action"] == "GUARDRAIL_INTERVENED"


def test_topics_through_the_embedding_service(tmp_path: Path) -> None:
    embeddings = EmbeddingService(Settings(data_dir=tmp_path))
    guardrails = service(tmp_path, embeddings)

    async def scenario() -> None:
        created = await guardrails.create(REGION, {"name": "topics", **MESSAGES, "topicPolicyConfig": {
            "topicsConfig": [{"name": "Cooking", "type": "DENY", "definition": "Recipes and how to cook food.",
                              "examples": ["How do I bake bread?", "What can I cook with eggs?"]}]}})
        on = await guardrails.apply(REGION, created.guardrail_id, None, "INPUT",
                                    text("Give me a recipe for chocolate chip cookies."))
        assert on["assessments"][0]["topicPolicy"]["topics"][0]["detected"] is True
        off = await guardrails.apply(REGION, created.guardrail_id, None, "INPUT",
                                     text("How do I configure a VPN on my laptop?"))
        assert off["action"] == "NONE"
        await embeddings.close_all()

    asyncio.run(scenario())


def test_embedding_policies_without_an_embedding_service_are_refused_clearly(tmp_path: Path) -> None:
    guardrails = service(tmp_path)

    async def scenario() -> None:
        created = await guardrails.create(REGION, {"name": "filters", **MESSAGES, "contentPolicyConfig": {
            "filtersConfig": [{"type": "HATE", "inputStrength": "HIGH", "outputStrength": "HIGH"}]}})
        with pytest.raises(ValidationException, match="embedding"):
            await guardrails.apply(REGION, created.guardrail_id, None, "INPUT", text("hello"))

    asyncio.run(scenario())
