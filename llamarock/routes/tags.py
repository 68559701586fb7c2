"""Tagging (``bedrock``): TagResource, UntagResource and ListTagsForResource, for every taggable resource by ARN
(``services/tagging.py``)."""

from __future__ import annotations

from typing import Any

from llamarock.routes.control import ControlCall
from llamarock.services.tagging import TaggingService


def _tagging(call: ControlCall) -> TaggingService:
    service: TaggingService = call.state.tagging
    return service


async def tag_resource(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    tags = [(tag["key"], tag["value"]) for tag in params["tags"]]
    await _tagging(call).tag(call.region, params["resourceARN"], tags)
    return {}


async def untag_resource(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    await _tagging(call).untag(call.region, params["resourceARN"], list(params["tagKeys"]))
    return {}


async def list_tags_for_resource(call: ControlCall, params: dict[str, Any]) -> dict[str, Any]:
    tags = await _tagging(call).tags(call.region, params["resourceARN"])
    return {"tags": [{"key": key, "value": value} for key, value in tags]}
