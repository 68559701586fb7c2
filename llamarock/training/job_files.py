"""The folder of one training run, shared by the server (parent) and the trainer (child): no torch here.

``<data_dir>/customization/<job id>/`` holds:

* ``spec.json``: what to train (:class:`TrainingSpec`), written by the parent before the first start;
* ``train.jsonl`` / ``validation.jsonl``: the checked rows as chats (``{"messages": [...], "completion": ...}``);
* ``progress.jsonl``: the child's events, one JSON object a line, appended and flushed as they happen
  (``start``, ``step``, ``validation``, ``checkpoint``, ``done``, ``stopped``, ``failed``); a resumed run appends
  after the last run's lines, repeating the steps after its checkpoint (readers keep the last line of a step);
* ``checkpoint.pt``: the adapter, optimizer and scheduler state after the last checkpointed step (replaced
  atomically), from which a restarted run resumes;
* ``stop``: present when the parent asked the run to stop (the child stops before its next step);
* ``pid``: the running child's process id;
* ``adapter/``: the finished peft adapter folder (``adapter_config.json`` + ``adapter_model.safetensors``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SPEC = "spec.json"
TRAIN = "train.jsonl"
VALIDATION = "validation.jsonl"
PROGRESS = "progress.jsonl"
CHECKPOINT = "checkpoint.pt"
STOP = "stop"
PID = "pid"
ADAPTER = "adapter"
ERROR = "error.txt"

EXIT_DONE = 0
EXIT_FAILED = 1
EXIT_STOPPED = 3
EXIT_ORPHANED = 4  # the server went away: leave the checkpoint for the next start


@dataclass(frozen=True)
class TrainingSpec:
    """One run: weights (``gguf`` file or ``hf`` folder), where the dequantized base is cached, the rows, and the
    hyperparameters as numbers."""

    gguf: str | None
    hf: str | None
    base_cache: str | None
    epochs: int
    batch_size: int
    learning_rate: float
    warmup_steps: int = 0
    max_length: int = 512
    lora_rank: int = 8
    lora_alpha: int = 16
    checkpoint_every: int = 50
    seed: int = 0
    threads: int | None = None
    device: str = "auto"
    has_validation: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def write(self, folder: Path) -> None:
        (folder / SPEC).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def read(cls, folder: Path) -> TrainingSpec:
        return cls(**json.loads((folder / SPEC).read_text()))


def read_progress(folder: Path) -> list[dict[str, Any]]:
    """Every complete event line so far (a line being written is skipped)."""
    path = folder / PROGRESS
    if not path.exists():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events
