"""The bare floor: a Starlette + aiohttp pass-through with no policy at all (for `make bench`)."""

from __future__ import annotations

import os
import sys

import aiohttp
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

UPSTREAM = os.environ["BARE_UPSTREAM"]  # e.g. http://127.0.0.1:9000/v1
session: aiohttp.ClientSession | None = None


async def chat(request: Request) -> Response:
    global session
    if session is None:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000))
    body = await request.body()
    headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
    resp = await session.post(UPSTREAM + "/chat/completions", data=body, headers=headers)
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        return StreamingResponse(resp.content.iter_any(), media_type="text/event-stream")
    data = await resp.read()
    return Response(data, status_code=resp.status, media_type="application/json")


app = Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])

if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
    )
