"""A WebSocket echo server (tests only): `ws_echo.py serve PORT` echoes every
message prefixed with "echo:"; `ws_echo.py client URL MESSAGE...` connects over
wss (certificate not verified, SNI flask.test), sends each message and prints
each reply. Uses Debian's python3-websockets."""
import asyncio
import ssl
import sys

import websockets


async def echo(ws, path=None):
    async for msg in ws:
        await ws.send("echo:" + msg)


async def serve(port):
    async with websockets.serve(echo, "127.0.0.1", port):
        print(f"ws echo listening on {port}", flush=True)
        await asyncio.Future()


async def client(url, messages):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    # The URL names flask.test (Host and SNI); the socket goes to loopback.
    async with websockets.connect(url, ssl=ctx, host="127.0.0.1") as ws:
        for m in messages:
            await ws.send(m)
            print(await ws.recv(), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2])))
    else:
        asyncio.run(client(sys.argv[2], sys.argv[3:]))
