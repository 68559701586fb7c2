"""Every table of the metadata database, in one ``MetaData``: the modules that define them are imported here, so
that migrations (``storage/migrations``) and their check see the whole schema."""

from __future__ import annotations

from sqlalchemy import MetaData


def metadata() -> MetaData:
    """``Base.metadata`` with every table module imported."""
    from llamarock.storage import (  # noqa: F401  (imported for their tables)
        batch,
        custom_model_deployments,
        custom_models,
        customization_jobs,
        guardrails,
        keys,
        knowledge,
        logging_config,
        model_access,
        model_import,
        profiles,
        provisioned,
        quotas,
        tags,
        usage,
    )
    from llamarock.storage.db import Base

    return Base.metadata
