"""Model customization vocabulary (pure): which base models Bedrock fine-tunes, their hyperparameters, the two
training-data row formats, the job and custom-model ARNs, and the metric files' names and columns.

Base models and hyperparameters are Bedrock's for Meta Llama (user guide, "Supported models and Regions for
fine-tuning" and "Meta Llama 3.1/3.2 model customization hyperparameters"): Llama 3.1 8B/70B Instruct and Llama 3.2
1B/3B/11B/90B Instruct, named by their base id or its ``:128k`` form; ``epochCount`` 1-10 (default 5),
``batchSize`` 1-1 (default 1), ``learningRate`` 5e-6-0.1 (default 1e-4). Beyond Bedrock (not in ``--compat
bedrock``, where Bedrock's refusal is kept), ``learningRateWarmupSteps`` 0-250 (default 0; Titan's range) is accepted
too, as the product's own examples send it: the learning rate rises linearly over that many steps.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from llamarock.errors import ValidationException

CONVERSATION_SCHEMA = "bedrock-conversation-2024"
CONTEXT_SUFFIX = ":128k"
# The base model ids Bedrock fine-tunes (without the :128k suffix, which names the same model).
FINE_TUNABLE = (
    "meta.llama3-1-8b-instruct-v1:0",
    "meta.llama3-1-70b-instruct-v1:0",
    "meta.llama3-2-1b-instruct-v1:0",
    "meta.llama3-2-3b-instruct-v1:0",
    "meta.llama3-2-11b-instruct-v1:0",
    "meta.llama3-2-90b-instruct-v1:0",
)

# Output files, as Bedrock lays them out under <outputDataConfig.s3Uri>/model-customization-job-<job id>/.
TRAINING_METRICS_FILE = "training_artifacts/step_wise_training_metrics.csv"
VALIDATION_METRICS_FILE = "validation_artifacts/post_fine_tuning_validation/validation_metrics.csv"
TRAINING_COLUMNS = ("step_number", "epoch_number", "training_loss", "perplexity")
VALIDATION_COLUMNS = ("step_number", "epoch_number", "validation_loss", "perplexity")


@dataclass(frozen=True)
class HyperParameter:
    """One hyperparameter of a model: its API name, type, inclusive range and default (as Bedrock shows it)."""

    name: str
    kind: type[int] | type[float]
    minimum: float
    maximum: float
    default: str


META_HYPERPARAMETERS = (
    HyperParameter("epochCount", int, 1, 10, "5"),
    HyperParameter("batchSize", int, 1, 1, "1"),
    HyperParameter("learningRate", float, 5e-6, 0.1, "0.0001"),
)
EXTENDED_HYPERPARAMETERS = (HyperParameter("learningRateWarmupSteps", int, 0, 250, "0"),)


def fine_tunable(identifier: str) -> str | None:
    """The base model id an identifier names for fine-tuning (an id, its ``:128k`` form, or a foundation-model
    ARN of either), or None when Bedrock does not fine-tune it."""
    model_id = identifier.split(":foundation-model/", 1)[1] if ":foundation-model/" in identifier else identifier
    if model_id.endswith(CONTEXT_SUFFIX):
        model_id = model_id[: -len(CONTEXT_SUFFIX)]
    return model_id if model_id in FINE_TUNABLE else None


def check_hyperparameters(base_model_id: str, given: dict[str, str] | None, *,
                          extended: bool = True) -> dict[str, str]:
    """The job's hyperparameters, defaults filled in; ValidationException for an unknown name or a value of the
    wrong type or out of its range. ``extended``: llamarock's own ones are known too (not in ``--compat bedrock``)."""
    known = META_HYPERPARAMETERS + (EXTENDED_HYPERPARAMETERS if extended else ())
    table = {parameter.name: parameter for parameter in known}
    given = dict(given or {})
    unknown = sorted(set(given) - set(table))
    if unknown:
        raise ValidationException(
            f"The hyperparameter(s) {', '.join(unknown)} are not supported for {base_model_id}. Supported "
            f"hyperparameters: {', '.join(table)}."
        )
    checked: dict[str, str] = {}
    for parameter in known:
        if parameter in EXTENDED_HYPERPARAMETERS and parameter.name not in given:
            continue  # llamarock's own: shown only when given, so a Bedrock request reads back as Bedrock's
        text = given.get(parameter.name, parameter.default)
        words = "an integer" if parameter.kind is int else "a number"
        try:
            value = parameter.kind(text.strip())
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not parameter.minimum <= value <= parameter.maximum:
            raise ValidationException(
                f"Invalid value {text!r} for hyperparameter {parameter.name}: it must be {words} between "
                f"{_number(parameter.minimum)} and {_number(parameter.maximum)} for {base_model_id}."
            )
        checked[parameter.name] = text.strip()
    return checked


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def job_arn(region: str, account: str, base_model_id: str, job_id: str) -> str:
    return f"arn:aws:bedrock:{region}:{account}:model-customization-job/{base_model_id}/{job_id}"


def custom_model_arn(region: str, account: str, base_model_id: str, model_id: str) -> str:
    return f"arn:aws:bedrock:{region}:{account}:custom-model/{base_model_id}/{model_id}"


@dataclass(frozen=True)
class Example:
    """One training row as a chat: the context messages (system/user/assistant, text) and the completion the
    model learns (the loss is on it only)."""

    messages: tuple[tuple[str, str], ...]
    completion: str

    def to_json(self) -> dict[str, Any]:
        return {"messages": [{"role": role, "content": text} for role, text in self.messages],
                "completion": self.completion}


class RowError(Exception):
    """A training or validation row that cannot be used: the job fails with this message."""


def parse_row(text: str, line: int, file: str) -> Example:
    """One JSONL line in either format: ``{"prompt": ..., "completion": ...}`` or ``bedrock-conversation-2024``
    (``schemaVersion``, optional ``system``, ``messages`` alternating user/assistant and ending with the
    assistant's turn, which is the completion)."""
    where = f"Line {line} of {file}"
    try:
        row = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise RowError(f"{where} is not valid JSON: {error}.") from None
    if not isinstance(row, dict):
        raise RowError(f"{where} is not a JSON object.")
    if "messages" in row or "schemaVersion" in row:
        return _conversation(row, where)
    unknown = sorted(set(row) - {"prompt", "completion"})
    if unknown:
        raise RowError(f"{where} has unknown fields {', '.join(unknown)}: a prompt/completion row has only "
                       "\"prompt\" and \"completion\"; a conversation row has \"schemaVersion\": "
                       f"\"{CONVERSATION_SCHEMA}\", \"system\" and \"messages\".")
    for member in ("prompt", "completion"):
        if not isinstance(row.get(member), str) or not row[member].strip():
            raise RowError(f"{where} has no {member} (a non-empty string).")
    return Example((("user", row["prompt"]),), row["completion"])


def _text(content: Any, where: str) -> str:
    if not isinstance(content, list) or not content:
        raise RowError(f"{where}: content must be a non-empty list of {{\"text\": ...}} blocks.")
    parts = []
    for block in content:
        if not isinstance(block, dict) or set(block) != {"text"} or not isinstance(block["text"], str):
            raise RowError(f"{where}: each content block must be {{\"text\": \"...\"}} (only text is supported for "
                           "Llama fine-tuning).")
        parts.append(block["text"])
    return "".join(parts)


def _conversation(row: dict[str, Any], where: str) -> Example:
    if row.get("schemaVersion") != CONVERSATION_SCHEMA:
        raise RowError(f"{where} has schemaVersion {row.get('schemaVersion')!r}; a conversation row has "
                       f"\"schemaVersion\": \"{CONVERSATION_SCHEMA}\".")
    unknown = sorted(set(row) - {"schemaVersion", "system", "messages"})
    if unknown:
        raise RowError(f"{where} has unknown fields {', '.join(unknown)}.")
    messages: list[tuple[str, str]] = []
    system = row.get("system")
    if system is not None:
        if not isinstance(system, list):
            raise RowError(f"{where}: system must be a list of {{\"text\": ...}} blocks.")
        if system:
            messages.append(("system", _text(system, f"{where}, system")))
    turns = row.get("messages")
    if not isinstance(turns, list) or len(turns) < 2:
        raise RowError(f"{where}: messages must be a list of at least a user and an assistant message.")
    for index, turn in enumerate(turns):
        expected = "user" if index % 2 == 0 else "assistant"
        if not isinstance(turn, dict) or turn.get("role") != expected or set(turn) != {"role", "content"}:
            raise RowError(f"{where}: message {index + 1} must be {{\"role\": \"{expected}\", \"content\": [...]}}; "
                           "messages alternate user and assistant, starting with user.")
        messages.append((expected, _text(turn["content"], f"{where}, message {index + 1}")))
    if messages[-1][0] != "assistant":
        raise RowError(f"{where}: the last message must be the assistant's (the completion the model learns).")
    if not messages[-1][1].strip():
        raise RowError(f"{where}: the last assistant message is empty.")
    return Example(tuple(messages[:-1]), messages[-1][1])
