"""Vision end to end: a tiny random-weight Llama 3.2 Vision (built by `llamarock models make-tiny`) served by the
transformers engine, called through boto3: the spec's multimodal InvokeModel example, Converse and ConverseStream
with image blocks, CountTokens, and every refusal of a bad image. One server for the module."""

from __future__ import annotations

import base64
import io
import json
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from PIL import Image

from llamarock.engines.tiny_vision import make_tiny
from llamarock.services.tiny_models import deployment_toml
from llamarock.storage.blobs import LocalBlobStore
from tests.conftest import Server, start_server, stop_server
from tests.test_invocation_logging import bedrock, data_dir, wait_records

try:
    import torch  # noqa: F401
    import transformers  # noqa: F401
except ImportError:  # pragma: no cover - the test extras install llamarock[vision]
    pytest.skip("torch and transformers are not importable: install llamarock[vision]", allow_module_level=True)

VISION_11B = "meta.llama3-2-11b-instruct-v1:0"
VISION_90B = "meta.llama3-2-90b-instruct-v1:0"
TEXT_ONLY = "meta.llama3-1-8b-instruct-v1:0"
SCOUT = "us.meta.llama4-scout-17b-instruct-v1:0"
MAVERICK = "meta.llama4-maverick-17b-instruct-v1:0"


def image_bytes(color: tuple[int, int, int], size: tuple[int, int] = (64, 48), fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, color)
    for x in range(0, size[0], 8):  # some structure, so that the image is more than one colour
        image.putpixel((x, x % size[1]), (255 - color[0], 255 - color[1], 255 - color[2]))
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` pixels (its CRC fixed, so only the size lies)."""
    data = bytearray(image_bytes((0, 0, 0), (4, 4)))
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


RED = image_bytes((220, 20, 20))
BLUE = image_bytes((20, 20, 220), (40, 90))


@pytest.fixture(scope="module")
def tiny_toml(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The TOML `llamarock models make-tiny` prints for the model it builds."""
    folder = tmp_path_factory.mktemp("tiny") / "llama32-vision"
    done = subprocess.run([sys.executable, "-m", "llamarock", "models", "make-tiny", "llama3.2-vision", str(folder)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").stat().st_size < 5_000_000
    return done.stdout


@pytest.fixture(scope="module")
def llama4_toml(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Llama 4 (built in this process, which has torch loaded already), served for Scout only: Maverick
    stays on the fake engine, a vision model whose deployment takes no images."""
    model = make_tiny("llama4", tmp_path_factory.mktemp("tiny4") / "llama4")
    return deployment_toml(model).replace(f', "{MAVERICK}"', "")


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory: pytest.TempPathFactory, tiny_toml: str, llama4_toml: str) -> Iterator[Server]:
    config = ("invocation_log_retry_max_s = 0.5\n\n" + tiny_toml + "threads = 1\n\n" + llama4_toml
              + 'threads = 1\n\n[[deployments]]\nname = "text"\nengine = "fake"\nmodels = ["*"]\n')
    server = start_server(tmp_path_factory.mktemp("vision"), config=config)
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def runtime(vision_server: Server) -> Any:
    return vision_server.client()


def converse_image(runtime: Any, data: bytes, fmt: str = "png", model: str = VISION_11B, text: str = "What is this?",
                   **extra: Any) -> dict[str, Any]:
    return runtime.converse(
        modelId=model,
        messages=[{"role": "user", "content": [{"image": {"format": fmt, "source": {"bytes": data}}},
                                               {"text": text}]}],
        inferenceConfig={"maxTokens": 12, "temperature": 0},
        **extra,
    )


def refusal(call: Any) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    error = caught.value.response["Error"]
    assert error["Code"] == "ValidationException", error
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    return str(error["Message"])


def test_make_tiny_prints_the_deployment(tiny_toml: str) -> None:
    assert 'engine = "transformers"' in tiny_toml
    assert VISION_11B in tiny_toml and VISION_90B in tiny_toml


def test_spec_multimodal_example_unchanged(runtime: Any, tmp_path: Path) -> None:
    path = tmp_path / "image.jpg"
    Image.open(io.BytesIO(RED)).convert("RGB").save(path, format="JPEG")

    def encode_image(image_path: Path) -> str:
        with open(image_path, "rb") as image_file:
            return base64.b64encode(image_file.read()).decode("utf-8")

    body = json.dumps({
        "prompt": "What do you see in this image? Describe it in detail.",
        "images": [encode_image(path)],
        "max_gen_len": 512,
        "temperature": 0.5,
    })
    response = runtime.invoke_model(modelId=VISION_90B, body=body)
    response_body = json.loads(response["body"].read())
    assert isinstance(response_body["generation"], str) and response_body["generation_token_count"] > 0
    assert response_body["stop_reason"] in ("stop", "length")
    # The image counts: (28/14)^2 patches + 1 per 28 px tile, in place of its one <|image|> token.
    text_only = runtime.count_tokens(modelId=VISION_90B, input={"invokeModel": {"body": json.dumps(
        {"prompt": "What do you see in this image? Describe it in detail."})}})["inputTokens"]
    assert response_body["prompt_token_count"] > text_only


def test_output_changes_with_the_image(runtime: Any) -> None:
    red = converse_image(runtime, RED)["output"]["message"]["content"][0]["text"]
    red_again = converse_image(runtime, RED)["output"]["message"]["content"][0]["text"]
    blue = converse_image(runtime, BLUE)["output"]["message"]["content"][0]["text"]
    assert red == red_again
    assert red != blue


def test_native_prompt_keeps_its_image_token(runtime: Any) -> None:
    image = base64.b64encode(BLUE).decode()
    def generation(prompt: str) -> dict[str, Any]:
        body = json.dumps({"prompt": prompt, "images": [image], "temperature": 0, "max_gen_len": 8})
        return json.loads(runtime.invoke_model(modelId=VISION_11B, body=body)["body"].read())

    formatted = ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{}Describe this image.<|eot_id|>"
                 "<|start_header_id|>assistant<|end_header_id|>\n\n")
    placed = generation(formatted.format(""))  # placed by the server where the formatted prompt shows it
    written = generation(formatted.format("<|image|>"))
    assert placed["generation"] == written["generation"]
    assert placed["prompt_token_count"] == written["prompt_token_count"]


def test_converse_stream_with_an_image(runtime: Any) -> None:
    expected = converse_image(runtime, BLUE)
    stream = runtime.converse_stream(
        modelId=VISION_11B,
        messages=[{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": BLUE}}},
                                               {"text": "What is this?"}]}],
        inferenceConfig={"maxTokens": 12, "temperature": 0},
    )
    text, usage = "", None
    for event in stream["stream"]:
        if "contentBlockDelta" in event:
            text += event["contentBlockDelta"]["delta"]["text"]
        if "metadata" in event:
            usage = event["metadata"]["usage"]
    assert text == expected["output"]["message"]["content"][0]["text"]
    assert usage is not None and usage["inputTokens"] == expected["usage"]["inputTokens"]


def test_count_tokens_counts_the_image(runtime: Any) -> None:
    def counted(content: list[dict[str, Any]]) -> int:
        return int(runtime.count_tokens(modelId=VISION_11B, input={"converse": {"messages": [
            {"role": "user", "content": content}]}})["inputTokens"])

    with_image = counted([{"image": {"format": "png", "source": {"bytes": RED}}}, {"text": "What is this?"}])
    without = counted([{"text": "What is this?"}])
    # The image counts (4 patches + 1) tokens for each 28 px tile it is cut into, not just its one <|image|> token.
    assert with_image >= without + 4
    assert converse_image(runtime, RED)["usage"]["inputTokens"] == with_image


def test_every_format(runtime: Any) -> None:
    for fmt in ("png", "jpeg", "gif", "webp"):
        data = image_bytes((10, 200, 10), fmt=fmt.upper())
        assert converse_image(runtime, data, fmt)["stopReason"] in ("end_turn", "max_tokens")


def test_bad_images_are_refused(runtime: Any) -> None:
    assert "does not match the specified image format" in refusal(lambda: converse_image(runtime, RED, "jpeg"))
    assert "not a png, jpeg, gif or webp image" in refusal(lambda: converse_image(runtime, b"not an image at all"))
    bmp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(bmp, format="BMP")
    assert "not a png, jpeg, gif or webp image" in refusal(lambda: converse_image(runtime, bmp.getvalue()))
    assert "could not be decoded" in refusal(lambda: converse_image(runtime, RED[: len(RED) // 2]))
    wide = io.BytesIO()
    Image.new("1", (8001, 2)).save(wide, format="PNG")
    assert "exceeds max pixels" in refusal(lambda: converse_image(runtime, wide.getvalue()))
    bomb = png_declaring(30000, 30000)  # 900 megapixels declared in a 100-byte file: refused from its header
    assert "exceeds max pixels" in refusal(lambda: converse_image(runtime, bomb))
    huge = RED + b"\0" * 3_750_000
    assert "3.75 MB" in refusal(lambda: converse_image(runtime, huge))


def test_image_count_and_placement_rules(runtime: Any) -> None:
    two = [{"image": {"format": "png", "source": {"bytes": RED}}}, {"image": {"format": "png", "source": {"bytes":
           BLUE}}}, {"text": "Compare them."}]
    message = refusal(lambda: runtime.converse(modelId=VISION_11B, messages=[{"role": "user", "content": two}]))
    assert "one image per request" in message
    image = base64.b64encode(RED).decode()
    body = json.dumps({"prompt": "<|image|><|image|>Compare.", "images": [image]})
    assert "2 <|image|> tokens for 1 images" in refusal(lambda: runtime.invoke_model(modelId=VISION_11B, body=body))
    body = json.dumps({"prompt": "Describe.", "images": ["%%% not base64 %%%"]})
    assert "#/images/0: string is not valid base64" in refusal(
        lambda: runtime.invoke_model(modelId=VISION_11B, body=body))
    assert "reserved for the images" in refusal(lambda: converse_image(runtime, RED, text="a <|image|> here"))


def test_images_where_they_cannot_go(runtime: Any) -> None:
    assert "is text-only" in refusal(lambda: converse_image(runtime, RED, model=TEXT_ONLY))
    body = json.dumps({"prompt": "Describe.", "images": [base64.b64encode(RED).decode()]})
    assert "extraneous key [images]" in refusal(lambda: runtime.invoke_model(modelId=TEXT_ONLY, body=body))
    assert "doesn't support image input" in refusal(lambda: converse_image(runtime, RED, model="us." + MAVERICK))
    assistant = [{"role": "user", "content": [{"text": "Hi"}]},
                 {"role": "assistant", "content": [{"image": {"format": "png", "source": {"bytes": RED}}}]}]
    assert "allowed only in user messages" in refusal(
        lambda: runtime.converse(modelId=VISION_11B, messages=assistant))


def test_text_only_requests_still_work(runtime: Any) -> None:
    response = runtime.converse(modelId=VISION_11B, messages=[{"role": "user", "content": [{"text": "Hello"}]}],
                                inferenceConfig={"maxTokens": 5, "temperature": 0})
    assert response["usage"]["outputTokens"] > 0


def test_make_tiny_refusals(tmp_path: Path) -> None:
    def make(family: str, folder: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "llamarock", "models", "make-tiny", family, str(folder)],
                              capture_output=True, text=True, timeout=120)

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    for family, folder, words in (("llama9", tmp_path / "new", "unknown family"),
                                  ("llama3.2-vision", tmp_path / "taken", "not an empty folder")):
        done = make(family, folder)
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert not (tmp_path / "new").exists()


def test_a_client_that_leaves_stops_its_generation(vision_server: Server, runtime: Any) -> None:
    def generated() -> int:
        return int(vision_server.health()[1]["deployments"]["tiny-llama3-2-vision"]["generated_tokens"])

    before = generated()
    stream = runtime.converse_stream(
        modelId=VISION_11B, inferenceConfig={"maxTokens": 2000, "temperature": 0},
        messages=[{"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": RED}}},
                                               {"text": "Talk for a long time."}]}])
    events = iter(stream["stream"])
    assert any("contentBlockDelta" in event for event in events)
    stream["stream"].close()
    # Generations run one at a time: this one runs once the abandoned one has stopped.
    small = converse_image(runtime, BLUE)
    assert small["usage"]["outputTokens"] == 12
    assert generated() - before < 2000


def test_invocation_logs_honour_image_delivery(vision_server: Server, runtime: Any) -> None:
    store = LocalBlobStore(data_dir(vision_server) / "blobs")
    (data_dir(vision_server) / "blobs" / "vision-logs").mkdir(parents=True)
    control = bedrock(vision_server)
    try:
        for prefix, delivered in (("with-images", True), ("without-images", False)):
            control.put_model_invocation_logging_configuration(loggingConfig={
                "s3Config": {"bucketName": "vision-logs", "keyPrefix": prefix}, "textDataDeliveryEnabled": True,
                "imageDataDeliveryEnabled": delivered})
            answer = converse_image(runtime, RED, text="Log this.")
            request_id = answer["ResponseMetadata"]["RequestId"]
            record = next(r for r in wait_records(store, "vision-logs", prefix, 1) if r["requestId"] == request_id)
            content = record["input"]["inputBodyJson"]["messages"][0]["content"]
            assert content[1] == {"text": "Log this."}
            assert content[0]["image"]["format"] == "png"
            assert content[0]["image"]["source"]["bytes"] == (base64.b64encode(RED).decode() if delivered else "")
            assert record["input"]["inputTokenCount"] == answer["usage"]["inputTokens"]
    finally:
        control.delete_model_invocation_logging_configuration()


def test_openai_image_url_is_the_same_image(vision_server: Server, runtime: Any) -> None:
    import openai

    client = openai.OpenAI(base_url=vision_server.url + "/openai/v1", api_key="anything", max_retries=0, timeout=300)
    url = "data:image/png;base64," + base64.b64encode(BLUE).decode()
    answer = client.chat.completions.create(
        model=VISION_11B, max_tokens=12, temperature=0,
        messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}},
                                               {"type": "text", "text": "What is this?"}]}])
    assert answer.choices[0].message.content == converse_image(runtime, BLUE)["output"]["message"]["content"][0]["text"]


def test_llama4_end_to_end(runtime: Any) -> None:
    def text(response: dict[str, Any]) -> str:
        return str(response["output"]["message"]["content"][0]["text"])

    red, blue = converse_image(runtime, RED, model=SCOUT), converse_image(runtime, BLUE, model=SCOUT)
    assert text(red) == text(converse_image(runtime, RED, model=SCOUT)) != text(blue)
    plain = runtime.converse(modelId=SCOUT, messages=[{"role": "user", "content": [{"text": "What is this?"}]}],
                             inferenceConfig={"maxTokens": 12, "temperature": 0})
    # Early fusion: the image is its own tokens in the prompt, <|image_start|> ... <|image_end|>, counted as such.
    counted = runtime.count_tokens(modelId=SCOUT, input={"converse": {"messages": [{"role": "user", "content": [
        {"image": {"format": "png", "source": {"bytes": RED}}}, {"text": "What is this?"}]}]}})["inputTokens"]
    assert counted == red["usage"]["inputTokens"] > plain["usage"]["inputTokens"] + 3
    two = runtime.converse(modelId=SCOUT, inferenceConfig={"maxTokens": 12, "temperature": 0}, messages=[
        {"role": "user", "content": [{"image": {"format": "png", "source": {"bytes": RED}}},
                                     {"image": {"format": "png", "source": {"bytes": BLUE}}},
                                     {"text": "Compare them."}]}])
    assert two["usage"]["inputTokens"] > red["usage"]["inputTokens"]
    body = json.dumps({"prompt": "What do you see?", "images": [base64.b64encode(BLUE).decode()],
                       "temperature": 0, "max_gen_len": 12})
    native = json.loads(runtime.invoke_model(modelId=SCOUT, body=body)["body"].read())
    assert native["generation_token_count"] == 12
