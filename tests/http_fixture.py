"""A loopback HTTP file server for download tests (127.0.0.1, a free port, one thread).

    with serve({"a.zip": data}) as srv:
        fetch(srv.url("a.zip"), ...)
        srv.requests            # [(path, Range header or None, status), ...]

Misbehaviour on demand (set the attributes, any time):
- `truncate_after = N`, `truncate_times = K`: send the full Content-Length but close the
  connection after N body bytes, for the next K responses (None: always);
- `fail_times = K`: answer 503 to the next K requests;
- `html = True`: answer a Google-Drive-like HTML page (`html_content_type` picks its type);
- `ignore_range = True`: answer 200 with the whole file even when a Range was asked.
"""

from __future__ import annotations

import contextlib
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HTML_PAGE = (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>"
             b"<body>Google Drive can't scan this file for viruses. <a href='?confirm=t'>Download "
             b"anyway</a></body></html>")


class LoopbackServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict[str, bytes]):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = dict(files)
        self.requests: list[tuple[str, str | None, int]] = []
        self.truncate_after: int | None = None
        self.truncate_times: int | None = None
        self.fail_times = 0
        self.html = False
        self.html_content_type = "text/html; charset=utf-8"
        self.ignore_range = False
        self.lock = threading.Lock()

    def url(self, name: str = "") -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/{name}"

    @property
    def range_requests(self) -> list[str]:
        return [r for _, r, _ in self.requests if r]


class _Handler(BaseHTTPRequestHandler):
    server: LoopbackServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _plan(self) -> tuple[int, bool, bool]:
        """Decide (status override, truncate, html) for this request under the lock."""
        srv = self.server
        with srv.lock:
            if srv.fail_times > 0:
                srv.fail_times -= 1
                return 503, False, False
            truncate = srv.truncate_after is not None and (srv.truncate_times is None or srv.truncate_times > 0)
            if truncate and srv.truncate_times is not None:
                srv.truncate_times -= 1
            return 0, truncate, srv.html

    def do_GET(self) -> None:
        srv = self.server
        name = self.path.lstrip("/").split("?")[0]
        rng = self.headers.get("Range")
        fail, truncate, html = self._plan()
        if fail:
            return self._reply(name, rng, fail, b"busy", "text/plain")
        if html:
            return self._reply(name, rng, 200, HTML_PAGE, srv.html_content_type)
        if name not in srv.files:
            return self._reply(name, rng, 404, b"not found", "text/plain")
        data = srv.files[name]
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m and not srv.ignore_range:
            start = int(m.group(1))
            if start >= len(data):
                return self._reply(name, rng, 416, b"", "text/plain",
                                   {"Content-Range": f"bytes */{len(data)}"})
            end = int(m.group(2)) + 1 if m.group(2) else len(data)
            body = data[start:end]
            extra = {"Content-Range": f"bytes {start}-{start + len(body) - 1}/{len(data)}"}
            return self._reply(name, rng, 206, body, "application/zip", extra, truncate)
        return self._reply(name, rng, 200, data, "application/zip", {}, truncate)

    def _reply(self, name, rng, status, body, ctype, extra=None, truncate=False) -> None:
        srv = self.server
        with srv.lock:
            srv.requests.append((name, rng, status))
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if truncate:
            body = body[: srv.truncate_after]
        self.wfile.write(body)
        self.wfile.flush()
        self.close_connection = True


@contextlib.contextmanager
def serve(files: dict[str, bytes]):
    srv = LoopbackServer(files)
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
