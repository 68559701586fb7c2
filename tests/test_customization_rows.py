"""Fine-tuning's pure vocabulary (bedrock/customization.py): base ids, hyperparameters, and both row formats."""

from __future__ import annotations

import json

import pytest

from llamarock.bedrock.customization import RowError, check_hyperparameters, fine_tunable, parse_row
from llamarock.errors import ValidationException


def test_fine_tunable_ids_and_their_128k_form() -> None:
    assert fine_tunable("meta.llama3-2-3b-instruct-v1:0") == "meta.llama3-2-3b-instruct-v1:0"
    assert fine_tunable("meta.llama3-1-70b-instruct-v1:0:128k") == "meta.llama3-1-70b-instruct-v1:0"
    assert fine_tunable("arn:aws:bedrock:us-west-2::foundation-model/meta.llama3-2-90b-instruct-v1:0:128k") == \
        "meta.llama3-2-90b-instruct-v1:0"
    for refused in ("meta.llama3-3-70b-instruct-v1:0", "meta.llama3-1-405b-instruct-v1:0",
                    "meta.llama3-8b-instruct-v1:0",
                    "meta.llama3-2-1b-instruct-v1:0:8k"):
        assert fine_tunable(refused) is None


def test_hyperparameters_defaults_and_ranges() -> None:
    model = "meta.llama3-2-1b-instruct-v1:0"
    bedrock = {"epochCount": "5", "batchSize": "1", "learningRate": "0.0001"}
    assert check_hyperparameters(model, None, extended=False) == bedrock
    assert check_hyperparameters(model, None) == bedrock
    assert check_hyperparameters(model, {"epochCount": "10", "learningRate": "5e-6"})["learningRate"] == "5e-6"
    # The spec's example sends learningRateWarmupSteps: accepted beyond Bedrock, refused as Bedrock does for Meta.
    assert check_hyperparameters(model, {"learningRateWarmupSteps": "10"})["learningRateWarmupSteps"] == "10"
    with pytest.raises(ValidationException, match="learningRateWarmupSteps"):
        check_hyperparameters(model, {"learningRateWarmupSteps": "0"}, extended=False)
    for bad in ({"epochCount": "1.5"}, {"epochCount": "11"}, {"batchSize": "0"}, {"learningRate": "0.000001"},
                {"learningRate": "nan"}, {"learningRate": "0.2"}, {"warmup": "1"}, {"learningRateWarmupSteps": "251"},
                {"learningRateWarmupSteps": "-1"}):
        with pytest.raises(ValidationException):
            check_hyperparameters(model, bad)


def conversation(**changes: object) -> str:
    row: dict[str, object] = {
        "schemaVersion": "bedrock-conversation-2024", "system": [{"text": "Be brief."}],
        "messages": [{"role": "user", "content": [{"text": "Hi"}]}, {"role": "assistant", "content": [{"text": "Yo"}]},
                     {"role": "user", "content": [{"text": "Again"}]},
                     {"role": "assistant", "content": [{"text": "Yo yo"}]}],
    }
    row.update(changes)
    return json.dumps(row)


def test_rows_in_both_formats() -> None:
    example = parse_row(json.dumps({"prompt": "Hi", "completion": "Yo"}), 1, "f")
    assert example.messages == (("user", "Hi"),) and example.completion == "Yo"
    example = parse_row(conversation(), 2, "f")
    assert example.messages == (("system", "Be brief."), ("user", "Hi"), ("assistant", "Yo"), ("user", "Again"))
    assert example.completion == "Yo yo"


@pytest.mark.parametrize(("text", "words"), [
    ("{", "not valid JSON"),
    ("[1]", "not a JSON object"),
    (json.dumps({"prompt": "Hi"}), "no completion"),
    (json.dumps({"prompt": "Hi", "completion": " "}), "no completion"),
    (json.dumps({"prompt": "Hi", "completion": "Yo", "extra": 1}), "unknown fields extra"),
    (conversation(schemaVersion="v1"), "schemaVersion"),
    (conversation(messages=[{"role": "assistant", "content": [{"text": "Yo"}]},
                            {"role": "user", "content": [{"text": "Hi"}]}]), "message 1"),
    (conversation(messages=[{"role": "user", "content": [{"text": "Hi"}]}]), "at least"),
    (conversation(messages=[{"role": "user", "content": [{"text": "Hi"}]},
                            {"role": "assistant", "content": [{"image": {}}]}]), "text"),
])
def test_bad_rows_name_their_line(text: str, words: str) -> None:
    with pytest.raises(RowError) as raised:
        parse_row(text, 7, "s3://b/train.jsonl")
    assert str(raised.value).startswith("Line 7 of s3://b/train.jsonl")
    assert words in str(raised.value)


def test_missing_train_packages_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from llamarock.training import missing_packages

    monkeypatch.setitem(sys.modules, "peft", None)  # as if not installed: find_spec answers None
    assert missing_packages() == ["peft"]
