"""Unit tests of llamarock.codec: event-stream frames (decoded by botocore), error rendering, model-path splitting."""

from __future__ import annotations

import base64
import json
import struct
import zlib
from typing import Any

import botocore.session
import pytest
from botocore.awsrequest import HeadersDict
from botocore.eventstream import ChecksumMismatch, EventStream, EventStreamBuffer, EventStreamError, EventStreamMessage
from botocore.parsers import EventStreamJSONParser, RestJSONParser
from botocore.serialize import create_serializer

from llamarock import errors
from llamarock.codec import eventstream
from llamarock.codec.errors import render_error, status_of
from llamarock.codec.response_usage import ResponseUsage
from llamarock.codec.rest_json import split_model_path

MODEL = botocore.session.get_session().get_service_model("bedrock-runtime")
STREAM_OP = MODEL.operation_model("InvokeModelWithResponseStream")
STREAM_SHAPE = STREAM_OP.output_shape.members["body"]
CHUNK = {"generation": "Hé", "prompt_token_count": 5, "generation_token_count": 1, "stop_reason": None}


def decode_all(data: bytes, step: int | None = None) -> list[EventStreamMessage]:
    buffer = EventStreamBuffer()
    messages: list[EventStreamMessage] = []
    step = step or len(data)
    for start in range(0, len(data), step):
        buffer.add_data(data[start : start + step])
        messages.extend(buffer)
    return messages


def decode_one(data: bytes) -> EventStreamMessage:
    messages = decode_all(data)
    assert len(messages) == 1
    return messages[0]


class _Raw:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self) -> Any:
        yield self.data


def botocore_events(data: bytes) -> EventStream:
    return EventStream(_Raw(data), STREAM_SHAPE, EventStreamJSONParser(), "InvokeModelWithResponseStream")


# ---------------------------------------------------------------------------------------------------- event stream


def test_frame_layout_and_crcs() -> None:
    data = eventstream.frame({"a": "b"}, b"xyz")
    total, header_len, prelude_crc = struct.unpack("!III", data[:12])
    assert total == len(data) == 16 + header_len + 3
    assert header_len == len(b"\x01a\x07\x00\x01b")
    assert data[12 : 12 + header_len] == b"\x01a\x07\x00\x01b"
    assert prelude_crc == zlib.crc32(data[:8])
    assert struct.unpack("!I", data[-4:])[0] == zlib.crc32(data[:-4])
    message = decode_one(data)
    assert message.headers == {"a": "b"}
    assert message.payload == b"xyz"
    assert message.prelude.total_length == len(data)


def test_frame_with_no_headers_and_empty_payload() -> None:
    data = eventstream.frame({}, b"")
    assert len(data) == 16
    message = decode_one(data)
    assert message.headers == {}
    assert message.payload == b""


def test_frame_utf8_header_value_length_in_bytes() -> None:
    message = decode_one(eventstream.frame({"k": "é✓"}, b"{}"))
    assert message.headers == {"k": "é✓"}


def test_chunk_event_headers_and_base64_round_trip() -> None:
    message = decode_one(eventstream.chunk_event(CHUNK))
    assert message.headers == {
        ":event-type": "chunk",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    payload = json.loads(message.payload)
    assert list(payload) == ["bytes"]
    assert json.loads(base64.b64decode(payload["bytes"])) == CHUNK


def test_chunk_event_parsed_by_botocore_event_stream() -> None:
    last = {**CHUNK, "stop_reason": "stop", "amazon-bedrock-invocationMetrics": {"inputTokenCount": 5}}
    events = list(botocore_events(eventstream.chunk_event(CHUNK) + eventstream.chunk_event(last)))
    assert len(events) == 2
    assert json.loads(events[0]["chunk"]["bytes"]) == CHUNK
    assert json.loads(events[1]["chunk"]["bytes"]) == last


@pytest.mark.parametrize(
    ("error", "member"),
    [
        (errors.ValidationException("Input is too long for requested model."), "validationException"),
        (errors.ModelStreamErrorException("boom", originalStatusCode=500), "modelStreamErrorException"),
        (errors.InternalServerException("oops"), "internalServerException"),
        (errors.ThrottlingException("slow down"), "throttlingException"),
        (errors.ModelTimeoutException("late"), "modelTimeoutException"),
        (errors.ServiceUnavailableException("down"), "serviceUnavailableException"),
    ],
)
def test_exception_event(error: errors.BedrockError, member: str) -> None:
    message = decode_one(eventstream.exception_event(error))
    assert message.headers == {
        ":exception-type": member,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    assert json.loads(message.payload) == {"message": error.message, **error.extra}
    assert member in STREAM_SHAPE.members
    with pytest.raises(EventStreamError) as info:
        list(botocore_events(eventstream.exception_event(error)))
    assert info.value.response["Error"] == {"Code": member, "Message": error.message}


def test_exception_event_extra_members() -> None:
    error = errors.ModelStreamErrorException("failed", originalStatusCode=500, originalMessage="engine died")
    payload = json.loads(decode_one(eventstream.exception_event(error)).payload)
    assert payload == {"message": "failed", "originalStatusCode": 500, "originalMessage": "engine died"}
    with pytest.raises(EventStreamError) as info:
        list(botocore_events(eventstream.chunk_event(CHUNK) + eventstream.exception_event(error)))
    assert info.value.response["Error"] == {"Code": "modelStreamErrorException", "Message": "failed"}


def test_frames_split_at_every_byte_boundary() -> None:
    data = (
        eventstream.chunk_event(CHUNK)
        + eventstream.chunk_event({**CHUNK, "generation": "llo"})
        + eventstream.exception_event(errors.ModelStreamErrorException("x", originalStatusCode=500))
    )
    expected = [(m.headers, m.payload) for m in decode_all(data)]
    assert len(expected) == 3
    for cut in range(1, len(data)):
        buffer = EventStreamBuffer()
        buffer.add_data(data[:cut])
        got = [(m.headers, m.payload) for m in buffer]
        buffer.add_data(data[cut:])
        got += [(m.headers, m.payload) for m in buffer]
        assert got == expected, cut
    for step in (1, 2, 3, 7):
        assert [(m.headers, m.payload) for m in decode_all(data, step)] == expected


def test_corrupted_frame_is_rejected_by_botocore() -> None:
    data = bytearray(eventstream.chunk_event(CHUNK))
    data[-6] ^= 0xFF
    with pytest.raises(ChecksumMismatch):
        decode_all(bytes(data))


# ---------------------------------------------------------------------------------------------------- errors

MODELLED = [
    (errors.ValidationException, 400),
    (errors.AccessDeniedException, 403),
    (errors.ResourceNotFoundException, 404),
    (errors.ModelTimeoutException, 408),
    (errors.ModelErrorException, 424),
    (errors.ModelStreamErrorException, 424),
    (errors.ThrottlingException, 429),
    (errors.ModelNotReadyException, 429),
    (errors.ServiceQuotaExceededException, 400),
    (errors.InternalServerException, 500),
    (errors.ServiceUnavailableException, 503),
]
# Control-plane codes, rendered with the bedrock service model.
CONTROL = [
    (errors.ConflictException, 400),
    (errors.TooManyTagsException, 400),
]
UNMODELLED = [
    (errors.UnrecognizedClientException, 403),
    (errors.IncompleteSignatureException, 400),
    (errors.InvalidSignatureException, 403),
    (errors.MissingAuthenticationTokenException, 403),
    (errors.UnknownOperationException, 404),
    (errors.SerializationException, 400),
    (errors.RequestTimeoutException, 408),
]


def _parse(status: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    response = {"status_code": status, "headers": HeadersDict(headers), "body": body}
    return RestJSONParser().parse(response, MODEL.operation_model("InvokeModel").output_shape)


@pytest.mark.parametrize(("cls", "status"), MODELLED + UNMODELLED)
def test_render_error(cls: type[errors.BedrockError], status: int) -> None:
    rendered_status, headers, body = render_error(cls(f"{cls.code} happened"), "req-123")
    assert rendered_status == status == status_of(cls("m"))
    assert headers == {
        "Content-Type": "application/json",
        "x-amzn-RequestId": "req-123",
        "x-amzn-ErrorType": f"{cls.code}:http://internal.amazon.com/coral/com.amazon.bedrock/",
    }
    assert json.loads(body) == {"message": f"{cls.code} happened"}
    parsed = _parse(rendered_status, headers, body)
    assert parsed["Error"] == {"Code": cls.code, "Message": f"{cls.code} happened"}
    assert parsed["ResponseMetadata"]["RequestId"] == "req-123"
    assert parsed["ResponseMetadata"]["HTTPStatusCode"] == status


@pytest.mark.parametrize(("cls", "status"), MODELLED)
def test_modelled_status_matches_botocore(cls: type[errors.BedrockError], status: int) -> None:
    assert MODEL.shape_for(cls.code).metadata["error"]["httpStatusCode"] == status


@pytest.mark.parametrize(("cls", "status"), UNMODELLED)
def test_unmodelled_uses_fallback(cls: type[errors.BedrockError], status: int) -> None:
    assert cls.code not in MODEL.shape_names
    assert cls.fallback_status == status


@pytest.mark.parametrize(("cls", "status"), CONTROL)
def test_control_plane_errors_take_the_bedrock_models_status(cls: type[errors.BedrockError], status: int) -> None:
    control = botocore.session.get_session().get_service_model("bedrock")
    assert control.shape_for(cls.code).metadata["error"]["httpStatusCode"] == status
    rendered_status, headers, _ = render_error(cls("m"), "r", "bedrock")
    assert rendered_status == status and headers["x-amzn-ErrorType"].startswith(cls.code + ":")


def test_every_error_class_is_covered() -> None:
    covered = {cls for cls, _ in MODELLED + UNMODELLED + CONTROL} | {errors.S3Error}  # S3's: below
    assert set(errors.BedrockError.__subclasses__()) == covered


def test_s3_errors_take_the_s3_models_status() -> None:
    """S3's codes (rendered as XML by codec/rest_xml.py): the status botocore's s3 model gives, where it gives one."""
    s3 = botocore.session.get_session().get_service_model("s3")
    classes = errors.S3Error.__subclasses__()
    assert len(classes) >= 20
    for cls in classes:
        if cls.code in s3.shape_names:
            assert s3.shape_for(cls.code).metadata["error"]["httpStatusCode"] == cls.fallback_status, cls.code


def test_render_error_extra_members() -> None:
    error = errors.ModelErrorException("bad", originalStatusCode=500, resourceName="dep")
    status, headers, body = render_error(error, "r")
    assert status == 424
    assert json.loads(body) == {"message": "bad", "originalStatusCode": 500, "resourceName": "dep"}
    parsed = _parse(status, headers, body)
    assert parsed["Error"]["Code"] == "ModelErrorException"
    # What boto3's client does to fill the modelled members of client.exceptions.ModelErrorException.
    response = {"status_code": status, "headers": HeadersDict(headers), "body": body}
    modelled = RestJSONParser().parse(response, MODEL.shape_for_error_code("ModelErrorException"))
    assert modelled == {"message": "bad", "originalStatusCode": 500, "resourceName": "dep"}


def test_render_error_non_ascii_message() -> None:
    status, headers, body = render_error(errors.ValidationException("isn’t supported"), "r")
    assert _parse(status, headers, body)["Error"]["Message"] == "isn’t supported"


# ---------------------------------------------------------------------------------------------------- model path

PROFILE_ARN = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-1-8b-instruct-v1:0"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/model/meta.llama3-8b-instruct-v1%3A0/invoke", ("meta.llama3-8b-instruct-v1:0", "invoke")),
        (b"/model/meta.llama3-8b-instruct-v1:0/invoke", ("meta.llama3-8b-instruct-v1:0", "invoke")),
        (b"/model/meta.llama2-13b-chat-v1/count-tokens", ("meta.llama2-13b-chat-v1", "count-tokens")),
        (b"/model/x%3A0/invoke-with-response-stream", ("x:0", "invoke-with-response-stream")),
        (
            b"/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A%3Afoundation-model%2Fmeta.llama3-1-70b-instruct-v1%3A0/invoke",
            ("arn:aws:bedrock:us-west-2::foundation-model/meta.llama3-1-70b-instruct-v1:0", "invoke"),
        ),
        (b"/model/us.meta.llama3-2-11b-instruct-v1%3A0/converse", ("us.meta.llama3-2-11b-instruct-v1:0", "converse")),
        (
            b"/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.meta.llama3-1-8b-"
            b"instruct-v1%3A0/invoke",
            (PROFILE_ARN, "invoke"),
        ),
        (
            b"/model/arn%3aaws%3abedrock%3aus-east-1%3a123456789012%3ainference-profile%2fus.meta.llama3-1-8b-instruct-v1"
            b"%3a0/converse-stream",
            (PROFILE_ARN, "converse-stream"),
        ),
        (("/model/" + PROFILE_ARN + "/invoke").encode(), (PROFILE_ARN, "invoke")),
        (b"/model/meta.llama3-8b-instruct-v1%3A0/invoke?x=1&y=%2F", ("meta.llama3-8b-instruct-v1:0", "invoke")),
        (b"/model/a%2Fb/count-tokens?", ("a/b", "count-tokens")),
        (b"/model/meta.llama3-8b-instruct-v1%3A0/", ("meta.llama3-8b-instruct-v1:0", "")),
        (b"/model/invoke", ("", "invoke")),
        (b"/model/", ("", "")),
        (b"/foo/meta.llama3-8b-instruct-v1%3A0/invoke", ("", "")),
        (b"/", ("", "")),
    ],
)
def test_split_model_path(raw: bytes, expected: tuple[str, str]) -> None:
    assert split_model_path(raw) == expected


@pytest.mark.parametrize(
    "model_id",
    [
        "meta.llama3-8b-instruct-v1:0",
        PROFILE_ARN,
        "us.meta.llama3-2-11b-instruct-v1:0",
        "arn:aws:bedrock:us-west-2::foundation-model/meta.llama3-1-70b-instruct-v1:0",
    ],
)
def test_split_model_path_as_botocore_serializes(model_id: str) -> None:
    request = create_serializer("rest-json").serialize_to_request(
        {"modelId": model_id, "body": b"{}"}, MODEL.operation_model("InvokeModel")
    )
    assert "%3A" in request["url_path"]
    assert split_model_path(request["url_path"].encode()) == (model_id, "invoke")


# ------------------------------------------------------------------- token counts read from a relayed response
def test_relayed_invoke_model_counts_take_cache_reads_off_the_whole_prompt() -> None:
    plain = ResponseUsage()
    plain.start({"X-Amzn-Bedrock-Input-Token-Count": "100", "X-Amzn-Bedrock-Output-Token-Count": "5",
                 "X-Amzn-Bedrock-Cache-Read-Input-Token-Count": "60", "Content-Type": "application/json"})
    assert (plain.total(), plain.input_tokens, plain.cache_read_tokens, plain.output_tokens) == (45, 40, 60, 5)

    streamed = ResponseUsage()
    streamed.start({"Content-Type": eventstream.CONTENT_TYPE})
    last = {"generation": "", "prompt_token_count": None, "generation_token_count": 3, "stop_reason": "stop",
            "amazon-bedrock-invocationMetrics": {"inputTokenCount": 80, "outputTokenCount": 3,
                                                 "invocationLatency": 9, "firstByteLatency": 2,
                                                 "cacheReadInputTokenCount": 79}}
    streamed.body(eventstream.chunk_event(last))
    assert (streamed.input_tokens, streamed.cache_read_tokens, streamed.output_tokens) == (1, 79, 3)

    converse = ResponseUsage()
    converse.start({"Content-Type": "application/json"})
    converse.body(json.dumps({"usage": {"inputTokens": 7, "outputTokens": 2, "totalTokens": 30,
                                        "cacheReadInputTokens": 21}}).encode())
    assert (converse.total(), converse.input_tokens, converse.cache_read_tokens) == (9, 7, 21)
