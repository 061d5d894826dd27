"""A loopback HTTP file server with switchable misbehaviour, for the model-zoo tests.

Files live in ``server.files`` (``{relative path: bytes}``); per-path behaviour in
``server.rules`` (:class:`Rule`); every request is recorded in ``server.requests``.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional


@dataclass
class Rule:
    honour_range: bool = True  # answer "Range: bytes=N-" with 206 (else ignore it: 200)
    cut_after_once: Optional[int] = None  # send only this many body bytes once, then close
    status: Optional[int] = None  # always answer this error status
    status_once: Optional[int] = None  # answer this error status once
    corrupt: bool = False  # serve different bytes of the same length
    stall_once_s: float = 0.0  # sleep before answering, once


@dataclass
class Record:
    path: str
    range: Optional[str]
    status: int = 0
    sent: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection: a cut closes it

    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        srv: ZooServer = self.server.zoo  # type: ignore[attr-defined]
        path = self.path.lstrip("/")
        rec = Record(path=path, range=self.headers.get("Range"))
        with srv.lock:
            srv.requests.append(rec)
            rule = srv.rules.setdefault(path, Rule())
            stall, rule.stall_once_s = rule.stall_once_s, 0.0
            once, rule.status_once = rule.status_once, None
            cut, rule.cut_after_once = rule.cut_after_once, None
        if stall:
            time.sleep(stall)
        status = rule.status or once
        data = srv.files.get(path)
        if status is None and data is None:
            status = 404
        if status is not None:
            rec.status = status
            self.send_error(status)
            return
        if rule.corrupt:
            data = bytes(b ^ 0xFF for b in data)
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", rec.range or "")
        if m and rule.honour_range:
            start = int(m.group(1))
            if start >= len(data):
                rec.status = 416
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            rec.status = 206
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            rec.status = 200
            self.send_response(200)
            self.send_header("Accept-Ranges", "bytes" if rule.honour_range else "none")
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if cut is not None:
            body = body[:cut]
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            return
        rec.sent = len(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that timed out is expected
        pass


class ZooServer:
    """Start with ``ZooServer()``; ``url`` is its base URL; call ``close()`` at the end."""

    def __init__(self):
        self.files: Dict[str, bytes] = {}
        self.rules: Dict[str, Rule] = {}
        self.requests: List[Record] = []
        self.lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.zoo = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def requests_for(self, path: str) -> List[Record]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
