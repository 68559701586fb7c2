"""Every invocation hands exactly one record to the observers, with the counts the response itself states."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from urllib.parse import unquote

import httpx
from botocore.eventstream import EventStreamBuffer

from llamarock.app import create_app
from llamarock.observability.records import InvocationRecord
from llamarock.settings import load_settings

MODEL = "/model/meta.llama3-8b-instruct-v1%3A0"
SLOW = [
    {"name": "slow", "engine": "fake", "models": ["meta.llama3-70b-instruct-v1:0"], "fake_token_delay_ms": 100,
     "fake_reply": "a b c d e f g h i j k l m n o p"},
    {"name": "fake", "engine": "fake", "models": ["*"]},
]


class Collect:
    def __init__(self) -> None:
        self.records: list[InvocationRecord] = []

    def record(self, record: InvocationRecord) -> None:
        self.records.append(record)


def _events(raw: bytes) -> list[tuple[str, dict]]:
    buffer = EventStreamBuffer()
    buffer.add_data(raw)
    return [(m.headers[":event-type"], json.loads(m.payload)) for m in buffer]


def test_one_record_per_invocation_with_the_response_counts(tmp_path: Path) -> None:
    async def run() -> None:
        app = create_app(load_settings(data_dir=tmp_path, deployments=SLOW))
        seen = Collect()
        app.state.observers.add(seen)
        await app.state.registry.load_all()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            plain = await client.post(MODEL + "/invoke", content=json.dumps({"prompt": "hi", "max_gen_len": 5}))
            assert plain.status_code == 200
            answer = plain.json()
            assert seen.records[-1].output_tokens == answer["generation_token_count"]
            assert seen.records[-1].input_tokens == int(plain.headers["X-Amzn-Bedrock-Input-Token-Count"])

            streamed = await client.post(MODEL + "/invoke-with-response-stream", content=json.dumps({"prompt": "x"}))
            chunks = [json.loads(base64.b64decode(p["bytes"])) for _, p in _events(streamed.content)]
            metrics = chunks[-1]["amazon-bedrock-invocationMetrics"]

            body = {"messages": [{"role": "user", "content": [{"text": "hello"}]}],
                    "requestMetadata": {"team": "search"}}
            converse = (await client.post(MODEL + "/converse", content=json.dumps(body))).json()
            stream = await client.post(MODEL + "/converse-stream", content=json.dumps(body))
            metadata = next(p for t, p in _events(stream.content) if t == "metadata")

            bad = await client.post(MODEL + "/converse", content=json.dumps({"messages": []}))
            assert bad.status_code == 400
            await client.post(MODEL + "/count-tokens", content=json.dumps({"input": {"converse": body}}))
        await app.state.registry.close_all()
        plain_rec, stream_rec, conv_rec, cstream_rec, bad_rec = seen.records
        # The stream states the whole prompt; the record counts cache reads apart (none on the fake engine).
        assert (stream_rec.input_tokens + stream_rec.cache_read_tokens, stream_rec.output_tokens) == (
            metrics["inputTokenCount"], metrics["outputTokenCount"])
        assert stream_rec.ttft_ms is not None and stream_rec.output_body == chunks
        assert (conv_rec.input_tokens, conv_rec.output_tokens) == (
            converse["usage"]["inputTokens"], converse["usage"]["outputTokens"])
        assert conv_rec.request_metadata == {"team": "search"} and conv_rec.output_body == converse
        assert (cstream_rec.input_tokens, cstream_rec.output_tokens) == (
            metadata["usage"]["inputTokens"], metadata["usage"]["outputTokens"])
        assert (bad_rec.status, bad_rec.error_code) == (400, "ValidationException")
        assert [r.operation for r in seen.records] == [
            "InvokeModel", "InvokeModelWithResponseStream", "Converse", "ConverseStream", "Converse"]
        assert all(r.model_id == "meta.llama3-8b-instruct-v1:0" and r.deployment == "fake" for r in seen.records)
        assert plain_rec.input_body is not None and json.loads(plain_rec.input_body)["prompt"] == "hi"

    asyncio.run(run())


def test_a_stream_whose_client_leaves_is_recorded_as_cancelled_with_what_was_produced(tmp_path: Path) -> None:
    async def run() -> None:
        app = create_app(load_settings(data_dir=tmp_path, deployments=SLOW))
        seen = Collect()
        app.state.observers.add(seen)
        await app.state.registry.load_all()
        got_body = asyncio.Event()
        requested = False

        async def receive() -> dict:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": json.dumps({"prompt": "x"}).encode(), "more_body": False}
            await got_body.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            if message["type"] == "http.response.body" and message.get("body"):
                got_body.set()

        path = "/model/meta.llama3-70b-instruct-v1%3A0/invoke-with-response-stream"
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": unquote(path), "raw_path": path.encode(), "query_string": b"",
                 "headers": [(b"content-type", b"application/json")], "client": ("127.0.0.1", 1),
                 "server": ("test", 80)}
        await app(scope, receive, send)
        await app.state.registry.close_all()
        (record,) = seen.records
        assert record.cancelled and record.status == 200 and record.error_code is None
        assert 1 <= record.output_tokens < 16

    asyncio.run(run())
