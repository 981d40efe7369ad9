"""The witness over HTTP (aiohttp), and the log's client for it.

    POST <prefix>/add-checkpoint        C2SP tlog-witness add-checkpoint
    GET  <prefix>/<origin hash>/checkpoint   the latest cosigned checkpoint of that log (monitoring)
"""

from __future__ import annotations

import asyncio
from typing import Sequence

from aiohttp import ClientError, ClientSession, ClientTimeout, web

from .protocol import MAX_REQUEST_BYTES, format_add_checkpoint
from .service import WitnessService


def build_witness_app(service: WitnessService) -> web.Application:
    app = web.Application(client_max_size=MAX_REQUEST_BYTES)

    async def add_checkpoint(request: web.Request) -> web.Response:
        body = await request.read()
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
