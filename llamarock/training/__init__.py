"""LoRA fine-tuning on torch/transformers/peft, run as a child process (``python -m llamarock.training.lora``).

The server never imports torch: ``job_files`` (the files a job's folder holds: the spec, the rows, progress,
checkpoint, adapter) is all the parent reads and writes, and ``missing_packages`` says whether the ``train`` extra
is installed without importing it.
"""

from __future__ import annotations

import importlib.util

TRAIN_PACKAGES = ("torch", "transformers", "peft")


def missing_packages() -> list[str]:
    """The packages of the ``train`` extra that are not installed (nothing is imported)."""
    return [name for name in TRAIN_PACKAGES if importlib.util.find_spec(name) is None]
