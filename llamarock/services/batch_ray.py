"""The ``ray`` batch executor (``jobs_executor = "ray"``): records fanned out as Ray tasks to workers that run
llamarock's engine on their own node."""

from __future__ import annotations

from llamarock.errors import ConfigError
from llamarock.services.batch_records import BatchExecutor
from llamarock.settings import Settings


def make_ray_executor(settings: Settings) -> BatchExecutor:
    """The Ray executor for ``settings.ray_address``."""
    raise ConfigError(
        "the ray jobs executor is not built yet: set jobs_executor = \"local\" (the default) to run batch inference "
        "jobs in the server process"
    )
