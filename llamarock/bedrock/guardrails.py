"""Guardrails as the runtime operations name them: Converse's ``guardrailConfig``, InvokeModel's guardrail headers.

llamarock has no guardrails yet, so every guardrail a request names does not exist here, and the request is refused
the way Bedrock refuses an unknown guardrail (ResourceNotFoundException) rather than answered unfiltered: a caller
must never believe output was checked when it was not.
"""

from __future__ import annotations

from llamarock.errors import ResourceNotFoundException


def check_guardrail(identifier: str | None, version: str | None) -> None:
    """Refuse a request that names a guardrail (none exist on this server yet)."""
    if identifier is None:
        return
    named = f"{identifier} (version {version})" if version else identifier
    raise ResourceNotFoundException(
        f"The guardrail {named} does not exist. llamarock does not serve guardrails yet, so no request can be "
        "checked by one; remove guardrailConfig (or the X-Amzn-Bedrock-GuardrailIdentifier header) and try again."
    )
