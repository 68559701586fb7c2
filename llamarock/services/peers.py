"""Peers: the other llamarock servers that ``region_servers`` names per region, and forwarding a runtime call to one.

The rule (docs/regions.md): a runtime call whose inference region — the request's region, or the region a
cross-region inference profile picks — is named in ``region_servers`` runs on that server, even when a deployment
here could serve the model. Calls this server refuses itself (an identifier its region cannot invoke), provisioned
models (their reservations are this server's) and calls that a peer already forwarded (``x-llamarock-forwarded``)
stay here, so a request crosses at most one hop and forwarding can never loop.

A forwarded request keeps its method, raw path, body and content headers; it is signed with SigV4 for the inference
region when ``peer_access_key_id`` is set, else sent unsigned (peers in ``--auth dev``). httpx exceptions are
translated here, once, into ServiceUnavailableException naming the region and the peer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

import httpx
from botocore.credentials import Credentials

from llamarock.context import ModelName
from llamarock.errors import BedrockError, ServiceUnavailableException
from llamarock.services.inference import InferenceService, Placement
from llamarock.services.signing import signed_headers
from llamarock.settings import Settings

log = logging.getLogger(__name__)

FORWARDED_HEADER = "x-llamarock-forwarded"
# Request headers a forwarded request keeps: content negotiation and Bedrock's own (performance tier, trace...).
_KEPT_REQUEST_HEADERS = frozenset({"content-type", "accept"})
# Response headers relayed to the caller: the content type, the request id, errors and Bedrock's counts.
_RELAYED_RESPONSE_HEADERS = frozenset({"content-type", "x-amzn-requestid", "x-amzn-errortype", "x-llamarock-served-by"})
_BEDROCK_HEADER_PREFIX = "x-amzn-bedrock-"


@dataclass(frozen=True)
class Peer:
    """The llamarock server of one region."""

    region: str
    url: str


@dataclass(frozen=True)
class Forward:
    """A runtime call that runs on a peer: the peer and where the call's model runs."""

    peer: Peer
    placement: Placement


def _describe(error: httpx.HTTPError) -> str:
    return str(error) or type(error).__name__


class PeerAnswer:
    """A peer's answer, its status and relayed headers received, its body still to read or stream.

    Close it (``read`` does) so that the connection goes back to the pool.
    """

    def __init__(self, peer: Peer, response: httpx.Response) -> None:
        self.peer = peer
        self.status = response.status_code
        self.headers = {
            name: value for name, value in response.headers.items()
            if name in _RELAYED_RESPONSE_HEADERS or name.startswith(_BEDROCK_HEADER_PREFIX)
        }
        self._response = response

    @property
    def streaming(self) -> bool:
        return self.headers.get("content-type", "").startswith("application/vnd.amazon.eventstream")

    async def read(self) -> bytes:
        try:
            return await self._response.aread()
        except httpx.HTTPError as error:
            raise self._broken(error) from error
        finally:
            await self.close()

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives."""
        try:
            async for chunk in self._response.aiter_bytes():
                yield chunk
        except httpx.HTTPError as error:
            raise self._broken(error) from error

    async def close(self) -> None:
        await self._response.aclose()

    def _broken(self, error: httpx.HTTPError) -> ServiceUnavailableException:
        log.warning("peer %s (%s) broke off its answer: %s", self.peer.url, self.peer.region, _describe(error))
        return ServiceUnavailableException(
            f"The llamarock server for {self.peer.region} ({self.peer.url}) broke off its answer: "
            f"{_describe(error)}. Retry the request."
        )


class PeerService:
    """Decides which calls run on a peer and sends them there, over one pooled HTTP client."""

    def __init__(self, settings: Settings, inference: InferenceService) -> None:
        self.settings = settings
        self.inference = inference
        self._servers = {region: url.rstrip("/") for region, url in settings.region_servers.items()}
        self._client: httpx.AsyncClient | None = None
        self._credentials = (
            Credentials(settings.peer_access_key_id, settings.peer_secret_access_key)
            if settings.peer_access_key_id and settings.peer_secret_access_key else None
        )

    def route(self, model: ModelName, region: str | None, already_forwarded: bool) -> Forward | None:
        """The peer that serves a call naming ``model`` signed for ``region``; None to serve it here."""
        if already_forwarded or not self._servers:
            return None
        try:
            placement = self.inference.place(model, region)
        except BedrockError:
            # A refusal is this server's to give, from the operation's own handler in its usual order of checks.
            return None
        if placement is None:
            return None
        url = self._servers.get(placement.inference_region)
        return None if url is None else Forward(Peer(placement.inference_region, url), placement)

    async def send(self, forward: Forward, method: str, raw_path: bytes, query: bytes,
                   headers: Mapping[str, str], body: bytes) -> PeerAnswer:
        """Send the call to its peer; returns once the peer's status and headers arrived."""
        peer = forward.peer
        url = peer.url + raw_path.decode("ascii") + ("?" + query.decode("ascii") if query else "")
        outgoing = {
            name: value for name, value in headers.items()
            if name.lower() in _KEPT_REQUEST_HEADERS or name.lower().startswith(_BEDROCK_HEADER_PREFIX)
        }
        outgoing[FORWARDED_HEADER] = "1"
        # The body is relayed as it comes; ask for it unencoded.
        outgoing["accept-encoding"] = "identity"
        outgoing = signed_headers(method, url, outgoing, body, self._credentials, peer.region)
        client = self._http()
        try:
            response = await client.send(client.build_request(method, url, headers=outgoing, content=body),
                                         stream=True)
        except httpx.HTTPError as error:
            log.warning("peer %s (%s) cannot be reached: %s", peer.url, peer.region, _describe(error))
            raise ServiceUnavailableException(
                f"The llamarock server for {peer.region} ({peer.url}) cannot be reached: {_describe(error)}. Check "
                "that it is running and that region_servers names its address, or retry later."
            ) from error
        return PeerAnswer(peer, response)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _http(self) -> httpx.AsyncClient:
        # Made on first use, inside the server's event loop; peers are addressed directly (no proxy from the env).
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self.settings.peer_timeout_s), trust_env=False)
        return self._client
