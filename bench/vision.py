"""Vision: image preprocessing time, TTFT with one image, and tok/s at concurrency 1 and 4, on the transformers
engine serving a tiny random-weight Llama 3.2 Vision or Llama 4 (`llamarock models make-tiny`), or a folder you name.

1. Preprocessing, in process: the Bedrock layer's checks and decode (`bedrock/images.check_image`) and the
   engine's processor (resize, tiling, normalisation: `TransformersEngine._prepare`) of a 1120 x 1120 JPEG photo-like
   image and of a 64 x 48 PNG, median of --repeats.
2. A real server (`llamarock serve`, the printed TOML) and boto3: ConverseStream with one image, greedy, --tokens
   tokens; TTFT is the time to the first contentBlockDelta, tok/s the output tokens over the whole stream time, at
   concurrency 1 and 4 (--requests streams each; the engine serialises generations, so 4 measures queueing).

Usage: .venv/bin/python bench/vision.py [--family llama3.2-vision|llama4] [--model-dir DIR] [--tokens 32]
       [--requests 8] [--repeats 20] [--threads N]
Prints one JSON object. Run by hand; never a test. Needs llamarock[vision].
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MODEL_IDS = {"llama3.2-vision": "meta.llama3-2-11b-instruct-v1:0", "llama4": "us.meta.llama4-scout-17b-instruct-v1:0"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _images() -> dict[str, bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, 1120, dtype=np.float32)
    photo = np.stack([np.add.outer(gradient, gradient) / 2, np.add.outer(gradient, -gradient) % 256,
                      rng.uniform(0, 255, (1120, 1120))], axis=-1).astype(np.uint8)
    large, small = io.BytesIO(), io.BytesIO()
    Image.fromarray(photo).save(large, format="JPEG", quality=90)
    Image.new("RGB", (64, 48), (200, 30, 30)).save(small, format="PNG")
    return {"jpeg_1120x1120": large.getvalue(), "png_64x48": small.getvalue()}


def _median_ms(action: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 2)


def preprocessing(model_dir: Path, repeats: int, threads: int | None) -> dict[str, Any]:
    from llamarock.bedrock.images import check_image
    from llamarock.engines.transformers import TransformersConfig, TransformersEngine
    from llamarock.types import GenerationRequest, SamplingParams

    engine = TransformersEngine("bench", TransformersConfig(model_dir, threads=threads))
    asyncio.run(engine.load())
    out: dict[str, Any] = {}
    for name, data in _images().items():
        request = GenerationRequest(sampling=SamplingParams(), prompt="<|image|>Describe this image.", images=(data,))
        out[name] = {
            "bytes": len(data),
            "check_and_decode_ms": _median_ms(lambda d=data: check_image(d, "bench"), repeats),
            "processor_ms": _median_ms(lambda r=request: engine._prepare(r), repeats),
        }
    asyncio.run(engine.close())
    return out


def _stream(client: Any, model_id: str, image: bytes, tokens: int) -> tuple[float, float, int]:
    started = time.perf_counter()
    response = client.converse_stream(
        modelId=model_id,
        messages=[{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": image}}},
                                               {"text": "Describe this image."}]}],
        inferenceConfig={"maxTokens": tokens, "temperature": 0},
    )
    first, output = None, 0
    for event in response["stream"]:
        if "contentBlockDelta" in event and first is None:
            first = time.perf_counter() - started
        if "metadata" in event:
            output = int(event["metadata"]["usage"]["outputTokens"])
    return first or 0.0, time.perf_counter() - started, output


def serving(toml: str, model_id: str, tokens: int, requests: int, threads: int | None) -> dict[str, Any]:
    import boto3
    from botocore.config import Config

    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.toml"
        config.write_text(toml + (f"threads = {threads}\n" if threads else ""))
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMAROCK_")}
        server = subprocess.Popen([sys.executable, "-m", "llamarock", "serve", "--port", str(port), "--data-dir",
                                   str(Path(tmp) / "data"), "--config", str(config)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 180
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(url + "/healthz", timeout=2) as health:
                        if health.status == 200:
                            break
                except OSError:
                    time.sleep(0.2)
            client = boto3.client("bedrock-runtime", region_name="us-west-2", endpoint_url=url,
                                  aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="secret",
                                  config=Config(retries={"max_attempts": 1}, read_timeout=600,
                                                max_pool_connections=8))
            image = _images()["png_64x48"]
            _stream(client, model_id, image, 4)  # warm-up
            results: dict[str, Any] = {}
            for level in (1, 4):
                count = max(requests, level)
                started = time.perf_counter()
                with ThreadPoolExecutor(level) as pool:
                    runs = list(pool.map(lambda _: _stream(client, model_id, image, tokens), range(count)))
                wall = time.perf_counter() - started
                results[f"concurrency_{level}"] = {
                    "ttft_ms_p50": round(statistics.median(r[0] for r in runs) * 1000, 1),
                    "tok_s_per_stream": round(statistics.median(r[2] / r[1] for r in runs), 1),
                    "tok_s_total": round(sum(r[2] for r in runs) / wall, 1),
                }
            return results
        finally:
            server.terminate()
            server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=tuple(MODEL_IDS), default="llama3.2-vision")
    parser.add_argument("--model-dir", type=Path, help="a Hugging Face folder (default: a tiny one, built now)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir
        if model_dir is None:
            from llamarock.engines.tiny_vision import make_tiny

            started = time.perf_counter()
            model_dir = make_tiny(args.family, Path(tmp) / "tiny").directory
            build_s = round(time.perf_counter() - started, 2)
        else:
            build_s = None
        model_id = MODEL_IDS[args.family]
        toml = ('[[deployments]]\nname = "vision"\nengine = "transformers"\n'
                f'model_path = "{model_dir}"\nmodels = ["{model_id.removeprefix("us.")}"]\n')
        report = {
            "model_dir": str(args.model_dir or f"tiny {args.family}"),
            "build_s": build_s,
            "preprocessing": preprocessing(model_dir, args.repeats, args.threads),
            "serving": serving(toml, model_id, args.tokens, args.requests, args.threads),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
