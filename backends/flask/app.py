"""The tutorial's Flask app, one file for all three versions.

The version comes from FLASK_VERSION (1, 2, 3) and the port from FLASK_PORT, so
the same file runs as website1..3 in Docker and as three local processes in tests.
/headers echoes the request headers as JSON so tests can see what edge forwarded.
"""
import hashlib
import os
import sys
import threading
import time

from flask import Flask, Response, jsonify, request

app = Flask(__name__)
VERSION = os.getenv("FLASK_VERSION", "1")
# Tests use FLASK_DELAY to make one backend slow; FLASK_HEALTH_STATUS to make its
# health endpoint fail.
DELAY = float(os.getenv("FLASK_DELAY", "0"))
# Slow requests in progress, and the most seen at once (/peak), so tests can check
# how many requests a proxy let through together.
_busy = {"now": 0, "peak": 0}
_busy_lock = threading.Lock()


@app.route("/")
def index():
    if DELAY:
        with _busy_lock:
            _busy["now"] += 1
            _busy["peak"] = max(_busy["peak"], _busy["now"])
        print(f"slow request started, answering in {DELAY}s", file=sys.stderr, flush=True)
        time.sleep(DELAY)
        with _busy_lock:
            _busy["now"] -= 1
    return f"<h1><center>This is Flask Application - Version{VERSION} Nginx</center></h1>"


@app.route("/headers")
def headers():
    return jsonify(
        version=VERSION,
        headers={k: v for k, v in request.headers.items()},
        remote_addr=request.remote_addr,
        path=request.full_path,
        environ_forwarded_for=request.environ.get("HTTP_X_FORWARDED_FOR"),
    )


@app.route("/echo", methods=["GET", "POST", "PUT"])
def echo():
    return jsonify(version=VERSION, method=request.method, body=request.get_data(as_text=True))


@app.route("/stream")
def stream():
    """`chunks` pieces of `size` bytes, sent as they are made: no Content-Length,
    so HTTP/1.1 carries it chunked. Tests check it arrives whole through edge."""
    chunks = int(request.args.get("chunks", "10"))
    size = int(request.args.get("size", "1000"))
    piece = (b"0123456789" * (size // 10 + 1))[:size]
    return Response((piece for _ in range(chunks)), mimetype="application/octet-stream")


@app.route("/sha256", methods=["POST", "PUT"])
def sha256():
    data = request.get_data()
    return jsonify(version=VERSION, length=len(data), sha256=hashlib.sha256(data).hexdigest())


@app.route("/peak")
def peak():
    return str(_busy["peak"])


@app.route("/healthz")
def healthz():
    status = int(os.getenv("FLASK_HEALTH_STATUS", "200"))
    return "ok" if status == 200 else ("unhealthy", status)


if __name__ == "__main__":
    port = int(os.getenv("FLASK_PORT", "5000"))
    # Tests wait for this line instead of sleeping.
    print(f"flask version {VERSION} listening on {port}", file=sys.stderr, flush=True)
    app.run(host=os.getenv("FLASK_HOST", "0.0.0.0"), port=port)
