"""The one request path: the operation table resolves every botocore URI, and the edge answers every failure of
every route AWS-shaped, with one request id per request (in-process: the real app through httpx's ASGI transport)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.eventstream import EventStreamBuffer
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from llamarock.app import create_app
from llamarock.auth.gate import Gate
from llamarock.codec import eventstream
from llamarock.codec.service_model import service_model
from llamarock.context import AGENT, AGENT_RUNTIME, BEDROCK, LLAMAROCK, RUNTIME, Operation
from llamarock.errors import ServiceUnavailableException
from llamarock.observability.records import Observers
from llamarock.routes.dispatch import dispatch_app
from llamarock.routes.edge import Edge
from llamarock.routes.operations import ROWS, OperationTable
from llamarock.settings import load_settings
from llamarock.storage.db import Database
from llamarock.storage.keys import KeyStore
from llamarock.storage.provisioned import ProvisionedStore


def _example_path(uri: str) -> tuple[bytes, dict[str, str]]:
    """A concrete path for a botocore requestUri, and the label values it carries."""
    labels: dict[str, str] = {}

    def fill(found: re.Match[str]) -> str:
        name = found[1].rstrip("+")
        labels[name] = f"v-{name.lower()}"
        return labels[name]

    path = re.sub(r"\{([^}]+)\}", fill, uri.split("?", 1)[0])
    return path.encode(), labels


# bedrock-agent-runtime operations on the same URIs as bedrock-agent's: the same operation, answered by its row.
SHARED_AGENT_URIS = {(AGENT_RUNTIME, name) for name in ("TagResource", "UntagResource", "ListTagsForResource")}


@pytest.mark.parametrize("service", [RUNTIME, BEDROCK, AGENT, AGENT_RUNTIME])
def test_every_botocore_operation_resolves_to_its_own_row(service: str) -> None:
    table = OperationTable()
    model = service_model(service)
    for name in model.operation_names:
        http = model.operation_model(name).http
        path, labels = _example_path(http["requestUri"])
        resolved = table.resolve(http["method"], path)
        if (service, name) in SHARED_AGENT_URIS:
            assert resolved is not None and (resolved[0].service, resolved[0].name) == (AGENT, name)
            continue
        assert resolved is not None, f"{name}: {http['method']} {path!r}"
        row, found = resolved
        assert (row.service, row.name) == (service, name)
        assert found == labels
        assert (row.handler is not None) == (name in table.implemented(service))


def test_rows_name_real_operations_once() -> None:
    keys = [(row.service, row.name) for row in ROWS]
    assert len(keys) == len(set(keys))
    for row in ROWS:
        if row.service in (RUNTIME, BEDROCK, AGENT, AGENT_RUNTIME):
            assert row.name in service_model(row.service).operation_names
            assert row.action.startswith("bedrock:")
        elif row.service == "s3":  # tests/test_s3_routing.py
            assert row.name in service_model("s3").operation_names and row.error_shape == "s3"
            assert row.action.startswith("s3:") or row.name == "DeleteObjects"  # authorised per key
        else:
            assert row.service == LLAMAROCK and row.route is not None
    table = OperationTable()
    # An ARN whose slashes arrive unencoded still names its model: the action is the path's last segment.
    arn = "arn:aws:bedrock:us-west-2::foundation-model/meta.llama3-8b-instruct-v1:0"
    resolved = table.resolve("POST", f"/model/{arn}/converse".encode())
    assert resolved is not None and resolved[0].name == "Converse" and resolved[1] == {"modelId": arn}
    assert table.resolve("POST", b"/model/m/frobnicate") is None
    assert table.resolve("GET", b"/nothing/here") is None


def _client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _check_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-amzn-errortype"] == code + ":http://internal.amazon.com/coral/com.amazon.bedrock/"
    uuid.UUID(response.headers["x-amzn-requestid"])
    body: dict[str, Any] = response.json()
    assert isinstance(body["message"], str) and body["message"]
    return body


def test_every_route_fails_aws_shaped_with_the_one_request_id(tmp_path: Path) -> None:
    async def run() -> None:
        app = create_app(load_settings(data_dir=tmp_path, engine="fake"))
        await app.state.registry.load_all()
        async with _client(app) as client:
            bad = await client.get("/llamarock/usage", params={"by": "nope"})
            assert "is not a grouping" in _check_error(bad, 400, "ValidationException")["message"]
            listing = await client.get("/model-copy-jobs")
            message = _check_error(listing, 404, "UnknownOperationException")["message"]
            assert message.startswith("llamarock does not implement the bedrock operation ListModelCopyJobs yet")
            asynchronous = await client.post("/async-invoke", content=b"{}")
            message = _check_error(asynchronous, 404, "UnknownOperationException")["message"]
            assert "bedrock-runtime operation StartAsyncInvoke" in message
            unknown = await client.post("/model/meta.llama3-8b-instruct-v1%3A0/invoke", content=b"not json")
            _check_error(unknown, 400, "ValidationException")
        await app.state.registry.close_all()
        # The audit line of each request carries the id its response did.
        lines = [json.loads(line) for line in (tmp_path / "logs" / "audit.jsonl").read_text().splitlines()]
        assert [line["requestId"] for line in lines] == [
            r.headers["x-amzn-requestid"] for r in (bad, listing, asynchronous, unknown)
        ]
        assert lines[1]["operation"] == "ListModelCopyJobs" and lines[1]["action"] == "bedrock:ListModelCopyJobs"

    asyncio.run(run())


def test_an_unavailable_database_is_a_retryable_503_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "db").mkdir()  # a directory where the SQLite file should be: every connection fails
    settings = load_settings(data_dir=tmp_path, engine="fake", database_url=f"sqlite:///{tmp_path / 'db'}")
    database = Database.for_settings(settings)
    with pytest.raises(ServiceUnavailableException, match="metadata database is unavailable"):
        ProvisionedStore(database).live()

    async def run() -> None:
        app = create_app(settings)
        async with _client(app) as client:
            answer = await client.get("/llamarock/usage")
            _check_error(answer, 503, "ServiceUnavailableException")
            # ListProvisionedModelThroughputs declares no ServiceUnavailableException: its retryable server fault
            # is InternalServerException (boto3 retries both), with the same message.
            control = await client.get("/provisioned-model-throughputs")
            body = _check_error(control, 500, "InternalServerException")
            assert "metadata database is unavailable" in body["message"]

    asyncio.run(run())


def _edge_app(tmp_path: Path, *rows: Operation) -> Starlette:
    """The real edge and gate around the one route, with rows of the test's own (handlers that misbehave)."""
    settings = load_settings(data_dir=tmp_path, engine="fake")
    gate = Gate(settings, KeyStore(Database.for_settings(settings), tmp_path))
    table = OperationTable(rows)
    app = Starlette(middleware=[Middleware(Edge, table=table, gate=gate, observers=Observers(), settings=settings)])
    app.router.default = dispatch_app
    return app


def test_unknown_exceptions_become_internal_server_errors_before_and_after_the_first_byte(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(request: Request) -> Response:
        raise RuntimeError("a bug")

    async def breaks_midway(request: Request) -> Response:
        async def frames() -> AsyncIterator[bytes]:
            yield eventstream.event("messageStart", {"role": "assistant"})
            raise RuntimeError("a bug after the first byte")

        return StreamingResponse(frames(), media_type=eventstream.CONTENT_TYPE)

    app = _edge_app(
        tmp_path,
        Operation(LLAMAROCK, "Broken", "", broken, route=("GET", "/broken")),
        Operation(LLAMAROCK, "BreaksMidway", "", breaks_midway, streaming=True, route=("GET", "/midway")),
    )

    async def run() -> None:
        async with _client(app) as client:
            broken_answer = await client.get("/broken")
            body = _check_error(broken_answer, 500, "InternalServerException")
            assert broken_answer.headers["x-amzn-requestid"] in body["message"]
            assert "Traceback" not in broken_answer.text and "a bug" not in broken_answer.text
            streamed = await client.get("/midway")
            assert streamed.status_code == 200
            buffer = EventStreamBuffer()
            buffer.add_data(streamed.content)
            messages = list(buffer)
            assert [m.headers[":message-type"] for m in messages] == ["event", "exception"]
            assert messages[1].headers[":exception-type"] == "internalServerException"
            uuid.UUID(streamed.headers["x-amzn-requestid"])  # the edge's id, on every response

    asyncio.run(run())
    assert "a bug" in caplog.text  # logged with the request id, never sent
