"""In-process checks through an ASGI transport: readiness before and after the deployments load."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx

from llamarock.app import create_app
from llamarock.settings import load_settings


def test_health_is_503_until_loaded_and_requests_wait_with_model_not_ready(tmp_path: Path) -> None:
    async def run() -> None:
        app = create_app(load_settings(engine="fake", data_dir=tmp_path))
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/healthz")
            assert response.status_code == 503
            assert response.json()["deployments"]["smollm2-135m-embedded"]["status"] == "loading"
            response = await client.post(
                "/model/meta.llama3-8b-instruct-v1%3A0/invoke", content=json.dumps({"prompt": "hi"})
            )
            assert response.status_code == 429
            assert response.headers["x-amzn-ErrorType"].startswith("ModelNotReadyException")
            assert "still loading" in response.json()["message"]
            await app.state.registry.load_all()
            assert (await client.get("/healthz")).status_code == 200
            response = await client.post(
                "/model/meta.llama3-8b-instruct-v1%3A0/invoke", content=json.dumps({"prompt": "hi"})
            )
            assert response.status_code == 200
            assert response.json()["stop_reason"] == "stop"
            await app.state.registry.close_all()

    asyncio.run(run())


def test_a_deployment_that_fails_to_load_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file")

    async def run() -> None:
        app = create_app(load_settings(data_dir=tmp_path, deployments=[{"name": "broken", "model_path": str(bad)}]))
        await app.state.registry.load_all()
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/healthz")
            assert response.status_code == 503
            assert response.json()["deployments"]["broken"]["status"] == "failed"
            response = await client.post("/model/meta.llama3-8b-instruct-v1:0/invoke", content=b'{"prompt":"x"}')
            assert response.status_code == 503
            assert response.headers["x-amzn-ErrorType"].startswith("ServiceUnavailableException")
            assert "failed to load" in response.json()["message"]

    asyncio.run(run())
