"""Knowledge bases (``bedrock-agent``): knowledge bases, data sources, ingestion jobs, documents and their tags.

The use cases are ``services/knowledge.py``'s (knowledge bases, data sources) and ``services/knowledge_ingestion.py``'s
(ingestion jobs, documents); these handlers turn its records into botocore's output shapes
(``KnowledgeBase``, ``DataSource``, ``IngestionJob``, their summaries, ``KnowledgeBaseDocumentDetail``) and page the
lists (``maxResults``/``nextToken``).
"""

from __future__ import annotations

from typing import Any

from llamarock.bedrock.catalog_api import page
from llamarock.routes.control import ControlCall
from llamarock.services.knowledge import DataSource, IngestionJob, KnowledgeBase, KnowledgeService
from llamarock.services.knowledge_ingestion import IngestionService
from llamarock.services.tagging import TaggingService


def _service(call: ControlCall) -> KnowledgeService:
    service: KnowledgeService = call.state.knowledge
    return service


def _ingestion(call: ControlCall) -> IngestionService:
    service: IngestionService = call.state.ingestion
    return service


def _paged(items: list[dict[str, Any]], params: dict[str, Any], call: ControlCall,
           member: str) -> dict[str, Any]:
    shown, token = page(items, params.get("maxResults"), params.get("nextToken"), call.operation)
    return {member: shown, **({"nextToken": token} if token else {})}


def _kb(kb: KnowledgeBase) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "knowledgeBaseId": kb.kb_id, "name": kb.name, "knowledgeBaseArn": kb.arn, "roleArn": kb.role_arn,
        "knowledgeBaseConfiguration": kb.configuration, "status": kb.status, "createdAt": kb.created_at,
        "updatedAt": kb.updated_at,
    }
    if kb.description is not None:
        shown["description"] = kb.description
    if kb.storage is not None:
        shown["storageConfiguration"] = kb.storage
    if kb.failure_reasons:
        shown["failureReasons"] = list(kb.failure_reasons)
    return shown


def _kb_summary(kb: KnowledgeBase) -> dict[str, Any]:
    shown = {"knowledgeBaseId": kb.kb_id, "name": kb.name, "status": kb.status, "updatedAt": kb.updated_at}
    if kb.description is not None:
        shown["description"] = kb.description
    return shown


def _ds(ds: DataSource) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "knowledgeBaseId": ds.kb_id, "dataSourceId": ds.ds_id, "name": ds.name, "status": ds.status,
        "dataSourceConfiguration": ds.configuration, "dataDeletionPolicy": ds.deletion_policy,
        "createdAt": ds.created_at, "updatedAt": ds.updated_at,
    }
    if ds.description is not None:
        shown["description"] = ds.description
    if ds.ingestion is not None:
        shown["vectorIngestionConfiguration"] = ds.ingestion
    if ds.encryption is not None:
        shown["serverSideEncryptionConfiguration"] = ds.encryption
    if ds.failure_reasons:
        shown["failureReasons"] = list(ds.failure_reasons)
    return shown


def _ds_summary(ds: DataSource) -> dict[str, Any]:
    shown = {"knowledgeBaseId": ds.kb_id, "dataSourceId": ds.ds_id, "name": ds.name, "status": ds.status,
             "updatedAt": ds.updated_at}
    if ds.description is not None:
        shown["description"] = ds.description
    return shown


def _job(job: IngestionJob) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "knowledgeBaseId": job.kb_id, "dataSourceId": job.ds_id, "ingestionJobId": job.job_id,
        "status": job.status, "statistics": dict(job.statistics), "startedAt": job.started_at,
        "updatedAt": job.updated_at,
    }
    if job.description is not None:
        shown["description"] = job.description
    if job.failure_reasons:
        shown["failureReasons"] = list(job.failure_reasons)
    return shown


def _job_summary(job: IngestionJob) -> dict[str, Any]:
    shown = _job(job)
    shown.pop("failureReasons", None)
    return shown


# ----------------------------------------------------------------------------------------------- knowledge bases


async def create_knowledge_base(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    return {"knowledgeBase": _kb(await _service(call).create_kb(call.region, params))}


async def get_knowledge_base(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    return {"knowledgeBase": _kb(await _service(call).get_kb(call.region, params["knowledgeBaseId"]))}


async def list_knowledge_bases(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    kbs = await _service(call).list_kbs(call.region)
    return _paged([_kb_summary(kb) for kb in kbs], params, call, "knowledgeBaseSummaries")


async def update_knowledge_base(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    kb = await _service(call).update_kb(call.region, params["knowledgeBaseId"], params)
    return {"knowledgeBase": _kb(kb)}


async def delete_knowledge_base(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    kb = await _service(call).delete_kb(call.region, params["knowledgeBaseId"])
    return {"knowledgeBaseId": kb.kb_id, "status": kb.status}


# ----------------------------------------------------------------------------------------------- data sources


async def create_data_source(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    ds = await _service(call).create_ds(call.region, params["knowledgeBaseId"], params)
    return {"dataSource": _ds(ds)}


async def get_data_source(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    ds = await _service(call).get_ds(call.region, params["knowledgeBaseId"], params["dataSourceId"])
    return {"dataSource": _ds(ds)}


async def list_data_sources(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    sources = await _service(call).list_ds(call.region, params["knowledgeBaseId"])
    return _paged([_ds_summary(ds) for ds in sources], params, call, "dataSourceSummaries")


async def update_data_source(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    ds = await _service(call).update_ds(call.region, params["knowledgeBaseId"], params["dataSourceId"], params)
    return {"dataSource": _ds(ds)}


async def delete_data_source(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    ds = await _service(call).delete_ds(call.region, params["knowledgeBaseId"], params["dataSourceId"])
    return {"knowledgeBaseId": ds.kb_id, "dataSourceId": ds.ds_id, "status": ds.status}


# ----------------------------------------------------------------------------------------------- ingestion jobs


async def start_ingestion_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    job = await _ingestion(call).start_job(call.region, params["knowledgeBaseId"], params["dataSourceId"], params)
    return {"ingestionJob": _job(job)}


async def get_ingestion_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    job = await _ingestion(call).get_job(call.region, params["knowledgeBaseId"], params["dataSourceId"],
                                       params["ingestionJobId"])
    return {"ingestionJob": _job(job)}


async def list_ingestion_jobs(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    jobs = await _ingestion(call).list_jobs(call.region, params["knowledgeBaseId"], params["dataSourceId"])
    for wanted in params.get("filters") or []:  # attribute STATUS, operator EQ, values
        if wanted.get("attribute") == "STATUS":
            jobs = [job for job in jobs if job.status in wanted.get("values", [])]
    sort = params.get("sortBy") or {}
    key = (lambda job: job.status) if sort.get("attribute") == "STATUS" else (lambda job: job.started_at)
    jobs = sorted(jobs, key=key, reverse=sort.get("order") == "DESCENDING")
    return _paged([_job_summary(job) for job in jobs], params, call, "ingestionJobSummaries")


async def stop_ingestion_job(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    job = await _ingestion(call).stop_job(call.region, params["knowledgeBaseId"], params["dataSourceId"],
                                        params["ingestionJobId"])
    return {"ingestionJob": _job(job)}


# ----------------------------------------------------------------------------------------------- documents


async def ingest_knowledge_base_documents(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    details = await _ingestion(call).ingest_documents(call.region, params["knowledgeBaseId"], params["dataSourceId"],
                                                    params["documents"])
    return {"documentDetails": details}


async def delete_knowledge_base_documents(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    details = await _ingestion(call).delete_documents(call.region, params["knowledgeBaseId"], params["dataSourceId"],
                                                    params["documentIdentifiers"])
    return {"documentDetails": details}


async def get_knowledge_base_documents(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    details = await _ingestion(call).get_documents(call.region, params["knowledgeBaseId"], params["dataSourceId"],
                                                 params["documentIdentifiers"])
    return {"documentDetails": details}


async def list_knowledge_base_documents(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    details = await _ingestion(call).list_documents(call.region, params["knowledgeBaseId"], params["dataSourceId"])
    return _paged(details, params, call, "documentDetails")


# ----------------------------------------------------------------------------------------------- tags


def _tagging(call: ControlCall) -> TaggingService:
    service: TaggingService = call.state.tagging
    return service


async def tag_resource(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _tagging(call).tag(call.region, params["resourceArn"], sorted(params["tags"].items()))
    return {}


async def untag_resource(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _tagging(call).untag(call.region, params["resourceArn"], list(params["tagKeys"]))
    return {}


async def list_tags_for_resource(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    tags = await _tagging(call).tags(call.region, params["resourceArn"])
    return {"tags": dict(tags)}
