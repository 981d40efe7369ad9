"""The witness over HTTP (aiohttp), and the log's client for it.

    POST <prefix>/add-checkpoint        C2SP tlog-witness add-checkpoint
    GET  <prefix>/<origin hash>/checkpoint   the latest cosigned checkpoint of that log (monitoring)

Anyone can connect, so reading a request is bounded (docs/audit.md, "Witnesses"): aiohttp's
keepalive_timeout closes a connection whose request headers have not all arrived request_timeout
seconds after it opened (or after the previous answer); the handler answers 408 and closes when the
body has not all arrived request_timeout seconds after the headers. aiohttp has no body timeout.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Sequence

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from .protocol import MAX_REQUEST_BYTES, format_add_checkpoint
from .service import WitnessService

log = logging.getLogger("masb.witness")
REQUEST_TIMEOUT_S = 20.0  # above aiohttp clients' 15 s keep-alive, so an idle client closes first


def build_witness_runner(service: WitnessService, request_timeout: float = REQUEST_TIMEOUT_S,
                         **kwargs) -> web.AppRunner:
    """The witness app in a runner whose connections wait at most request_timeout seconds (> 0) for
    a request's headers, and its handler as long for the body; kwargs go to web.AppRunner."""
    # lingering_time: after a 408 or 413, how long unread body bytes are still drained before closing.
    return web.AppRunner(build_witness_app(service, request_timeout), keepalive_timeout=request_timeout,
                         lingering_time=min(request_timeout, 2.0), **kwargs)


def build_witness_app(service: WitnessService, request_timeout: float = REQUEST_TIMEOUT_S) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)

    async def add_checkpoint(request: web.Request) -> web.Response:
        if request.content_length is not None and request.content_length > MAX_REQUEST_BYTES:
            # Refused before waiting for bytes that could never make a valid request.
            return web.Response(status=413, text=f"request larger than {MAX_REQUEST_BYTES} bytes\n",
                                headers={"Connection": "close"})
        try:
            async with asyncio.timeout(request_timeout):
                body = await request.read()
        except TimeoutError:
            log.warning("add-checkpoint: request body not received within %g s; answered 408 and closed",
                        request_timeout)
            return web.Response(status=408, text=f"request body not received within {request_timeout:g} s\n",
                                headers={"Connection": "close"})
        # The check, the cosignature and the fsync are short; one thread keeps the event loop free.
        result = await asyncio.to_thread(service.add_checkpoint, body)
        # The exact Content-Type the spec names (a 409 is "text/x.tlog.size", with no parameters).
        return web.Response(status=result.status, body=result.body.encode("utf-8"),
                            headers={"Content-Type": result.content_type})

    async def checkpoint(request: web.Request) -> web.Response:
        note = service.latest_note(request.match_info["origin_hash"])
        if note is None:
            return web.Response(status=404, text="no cosigned checkpoint for that log\n")
        return web.Response(text=note, content_type="text/plain")

    app.router.add_post("/add-checkpoint", add_checkpoint)
    app.router.add_get("/{origin_hash}/checkpoint", checkpoint)
    return app


async def submit_checkpoint(session: ClientSession, url: str, old_size: int, proof: Sequence[bytes], note: str,
                            timeout: float = 10.0) -> tuple[int, str]:
    """POST one add-checkpoint request; (HTTP status, body). Status 0 when the witness cannot be
    reached (the body then names the error type)."""
    try:
        async with session.post(url.rstrip("/") + "/add-checkpoint", data=format_add_checkpoint(old_size, list(proof), note),
                                timeout=ClientTimeout(total=timeout)) as response:
            return response.status, await response.text()
    except (ClientError, asyncio.TimeoutError, OSError) as exc:
        return 0, type(exc).__name__
