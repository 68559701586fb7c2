"""Outbound SigV4: the one place llamarock signs a request it sends (peers in ``region_servers``, the CLI asking a
running server), exactly as boto3 would sign the same request."""

from __future__ import annotations

from collections.abc import Mapping

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

SIGNING_SERVICE = "bedrock"


def signed_headers(
    method: str, url: str, headers: Mapping[str, str], body: bytes, credentials: Credentials | None, region: str,
    service: str = SIGNING_SERVICE,
) -> dict[str, str]:
    """``headers`` plus a SigV4 signature for ``region`` and ``service``; unchanged when there are no credentials."""
    if credentials is None:
        return dict(headers)
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers))
    SigV4Auth(credentials, service, region).add_auth(request)
    return dict(request.headers.items())
