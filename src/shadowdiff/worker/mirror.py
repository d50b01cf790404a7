"""Sending a copy of a request to a mirror target and timing its answer.

Knows aiohttp, nothing of mitmproxy. One pooled session for all targets; bodies are read raw
(no decompression) so both sides of a comparison are decoded the same way later. A response
body over the size limit is an outcome (`too_large`), never a truncated body.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from yarl import URL

from shadowdiff.config import SHADOW_MARKER
from shadowdiff.config import Mirror as MirrorConfig
from shadowdiff.model import Headers, Outcome, RequestSnapshot

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "expect",
    }
)
"""Headers that belong to one connection, not to the request; aiohttp sets its own.
`Expect: 100-continue` was already answered to the client by the proxy."""


def copy_headers(headers: Headers, cfg: MirrorConfig) -> list[tuple[str, str]]:
    """The copy's headers: the original's minus hop-by-hop and removed ones, plus set ones."""
    drop = HOP_BY_HOP | {name.lower() for name in cfg.headers.remove}
    drop |= {name.lower() for name in cfg.headers.set}
    out = [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, value in headers
        if name.decode("latin-1").lower() not in drop
    ]
    out.extend(cfg.headers.set.items())
    out.append(SHADOW_MARKER)
    return out


def error_kind(exc: BaseException) -> str:
    """Maps a client exception to an outcome error kind."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(
        exc,
        aiohttp.ServerDisconnectedError
        | aiohttp.ClientPayloadError
        | ConnectionResetError
        | aiohttp.ClientOSError,
    ):
        return "reset"
    return "protocol"


class TooLarge(Exception):
    pass


class Unsendable(Exception):
    """A copy the HTTP client refuses to build (a control byte in a header, a method that is
    no token): the client's request is at fault, never the shadow, so it is no outcome."""


class Mirror:
    """Sends copies; the session lives as long as the worker."""

    def __init__(self, cfg: MirrorConfig) -> None:
        self.cfg = cfg
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=cfg.max_in_flight * 2, force_close=False),
            timeout=aiohttp.ClientTimeout(total=cfg.timeout),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        await self.session.close()

    async def send(self, base: str, request: RequestSnapshot) -> Outcome:
        """One copy to `base + path`; every failure is an outcome, but a copy that cannot
        be built raises `Unsendable`."""
        started = time.perf_counter()
        if not request.path.startswith("/"):  # `@host/…` would make `base` a user name
            return Outcome(error="protocol", latency=0.0)
        try:
            async with self.session.request(
                request.method,
                # encoded: the request target goes out byte for byte as the client sent it,
                # never re-quoted or normalised (`/a/../b`, `%7e`, a raw `<` stay as they are)
                URL(base + request.path, encoded=True),
                headers=copy_headers(request.headers, self.cfg),
                data=request.body or None,
                allow_redirects=False,
                compress=None,
            ) as response:
                body = await self._read(response)
                return Outcome(
                    status=response.status,
                    headers=list(response.raw_headers),
                    body=body,
                    latency=time.perf_counter() - started,
                )
        except TooLarge:
            return Outcome(error="too_large", latency=time.perf_counter() - started)
        except ValueError as e:  # aiohttp's refusal to build it (InvalidURL is one too)
            raise Unsendable(str(e)) from None
        except Exception as e:  # noqa: BLE001 - a copy never raises: every failure is an outcome
            return Outcome(error=error_kind(e), latency=time.perf_counter() - started)

    async def _read(self, response: aiohttp.ClientResponse) -> bytes:
        limit = self.cfg.max_body
        if response.content_length is not None and response.content_length > limit:
            raise TooLarge
        body = bytearray()
        async for chunk in response.content.iter_chunked(64 * 1024):
            body += chunk
            if len(body) > limit:
                raise TooLarge
        return bytes(body)
