"""The floor: a bare FastAPI endpoint returning a fixed chat completion (no routing, no
validation beyond JSON). Also the instant upstream that forwarding gateways call in
`bench.peers`. Run: python -m bench.floor PORT"""

from __future__ import annotations

import sys
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import Response

BODY = (
    b'{"id":"chatcmpl-floor","object":"chat.completion","created":0,"model":"floor",'
    b'"choices":[{"index":0,"message":{"role":"assistant","content":"ok"},'
    b'"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,'
    b'"total_tokens":2}}'
)

app = FastAPI()


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    await request.body()
    return Response(BODY, media_type="application/json")


@app.get("/v1/models")
async def models() -> dict[str, object]:
    return {
        "object": "list",
        "data": [{"id": "floor", "object": "model", "created": int(time.time())}],
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False)
