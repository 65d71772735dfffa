"""A real S3-compatible server for tests (moto's standalone server on 127.0.0.1), and a real HTTP
proxy in front of it that can fail chosen requests.

The server enforces IAM authentication once set up: user "admin" may do anything on S3, user
"nobody" nothing (access denied). Each is a real access key pair signed with SigV4 by the
clients (pyarrow's AWS SDK, boto3). Stopped by process id, never by name.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

START_TIMEOUT_S = 60
REGION = "us-east-1"
ADMIN_POLICY = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": ["s3:*"], "Resource": "*"}]}
# Every AWS variable a developer's shell might hold: a test sees only the ones it sets.
AWS_VARS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION",
            "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE",
            "AWS_SHARED_CREDENTIALS_FILE", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    url: str
    proc: subprocess.Popen
    log: Path
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)   # user -> (key id, secret)
    scheme = "s3"

    def env(self, user: str = "admin", endpoint: str = "") -> dict[str, str]:
        """AWS variables a client of this server exports (credentials, endpoint, region)."""
        key_id, secret = self.keys[user]
        return {"AWS_ACCESS_KEY_ID": key_id, "AWS_SECRET_ACCESS_KEY": secret, "AWS_REGION": REGION,
                "AWS_ENDPOINT_URL": endpoint or self.url,
                # no config files of whoever runs the tests
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    def process_env(self, user: str = "admin", endpoint: str = "") -> dict[str, str]:
        """os.environ without any AWS variable, plus this server's (for subprocesses)."""
        env = {k: v for k, v in os.environ.items() if k not in AWS_VARS}
        env.update(self.env(user, endpoint))
        return env

    def client(self, user: str = "admin"):
        import boto3

        key_id, secret = self.keys[user]
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=key_id,
                            aws_secret_access_key=secret)

    # The calls tests/_gcs.py's GcsServer has too, so tests can take either server (`object_store`).
    def create_bucket(self, bucket: str) -> None:
        """Create `bucket` (as admin); one that exists already is kept as it is."""
        self.client().create_bucket(Bucket=bucket)         # us-east-1: creating an owned bucket is a no-op

    def put(self, bucket: str, key: str, data: bytes) -> None:
        self.client().put_object(Bucket=bucket, Key=key, Body=data)

    def delete(self, bucket: str, key: str) -> None:
        self.client().delete_object(Bucket=bucket, Key=key)

    def upload_tree(self, folder: Path, bucket: str, prefix: str = "") -> int:
        """Upload every file under `folder` to s3://bucket/prefix/<relative path>; returns the count."""
        c = self.client()
        n = 0
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                c.upload_file(str(p), bucket, (prefix.rstrip("/") + "/" if prefix else "") + p.relative_to(folder).as_posix())
                n += 1
        return n

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        c = self.client()
        out = {}
        for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = c.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()
        return out


def _post(url: str, body: bytes) -> None:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/plain"})
    urllib.request.urlopen(req, timeout=10).read()


def start_s3(log_dir: Path) -> S3Server:
    """Start moto's server on a free port, create users "admin" and "nobody", then enforce auth."""
    port = free_port()
    log = log_dir / "moto.log"
    env = {k: v for k, v in os.environ.items() if k not in AWS_VARS and k != "INITIAL_NO_AUTH_ACTION_COUNT"}
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{port}", proc, log)
    wait_until_up(proc, log, "moto server", lambda: urllib.request.urlopen(server.url + "/moto-api/data.json",
                                                                         timeout=2).read())
    import boto3

    # Unauthenticated until reset-auth below: make the users.
    iam = boto3.client("iam", endpoint_url=server.url, region_name=REGION, aws_access_key_id="setup",
                       aws_secret_access_key="setup")
    for user, policy in (("admin", ADMIN_POLICY), ("nobody", None)):
        iam.create_user(UserName=user)
        if policy:
            iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        k = iam.create_access_key(UserName=user)["AccessKey"]
        server.keys[user] = (k["AccessKeyId"], k["SecretAccessKey"])
    _post(server.url + "/moto-api/reset-auth", b"0")      # from now on every request is checked
    return server


def wait_until_up(proc: subprocess.Popen, log: Path, what: str, probe: Callable[[], object],
                  errors: tuple[type[BaseException], ...] = (OSError,)) -> None:
    """Poll `probe` until it succeeds; fail the test (stopping `proc`) if the server exits or is
    not up within START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            probe()
            return
        except errors:
            if time.monotonic() > deadline:
                stop_process_group(proc)
                pytest.fail(f"{what} not up after {START_TIMEOUT_S}s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)


def stop_process_group(proc: subprocess.Popen) -> None:
    """SIGTERM a server started in its own process group, SIGKILL if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def stop_s3(server: S3Server) -> None:
    stop_process_group(server.proc)


# --------------------------------------------------------------------------- the proxy


CONTROL = "/__fault-proxy__/"     # requests to this path drive the proxy instead of passing through


@dataclass
class Fault:
    """Answer requests whose path contains `match` (and whose method is in `methods`) with an
    S3 error `status` the next `times` times (-1: always), instead of forwarding them."""

    match: str
    times: int
    status: int = 503
    methods: tuple[str, ...] = ("GET", "HEAD")


class FaultProxy:
    """A reverse HTTP proxy on 127.0.0.1 forwarding to `upstream`, failing requests on demand.

    Clients point their endpoint at `url`; each request is forwarded byte for byte (headers
    included, so SigV4 signatures stay valid) unless a Fault matches. `seen` records
    (method, path, status) of every request.
    """

    def __init__(self, upstream: str) -> None:
        host, port = upstream.split("://", 1)[1].split(":")
        self.upstream = (host, int(port))
        self.faults: list[Fault] = []
        self.seen: list[tuple[str, str, int]] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", 0) or 0)
                body = self.rfile.read(length) if length else b""
                if self.path.startswith(CONTROL):
                    self._control(self.path[len(CONTROL):], body)
                    return
                fault = proxy._take(self.command, self.path)
                if fault is not None:
                    err = (b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>SlowDown</Code>"
                           b"<Message>Please reduce your request rate.</Message></Error>")
                    self.send_response(fault.status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(err)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(err)
                    proxy._log(self.command, self.path, fault.status)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() != "connection"}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data) if self.command != "HEAD"
                                                       else resp.getheader("Content-Length") or 0))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()
                proxy._log(self.command, self.path, resp.status)

            def _control(self, action: str, body: bytes) -> None:
                """The proxy driven over HTTP, when it runs in a process of its own (ProxyProcess)."""
                if action == "fail":
                    kw = json.loads(body)
                    proxy.fail(kw["match"], kw["times"], kw["status"], tuple(kw["methods"]))
                elif action == "clear":
                    proxy.clear()
                out = json.dumps(proxy.requests_for("")).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, match: str, times: int, status: int = 503, methods: tuple[str, ...] = ("GET", "HEAD")) -> None:
        with self.lock:
            self.faults.append(Fault(match, times, status, methods))

    def clear(self) -> None:
        with self.lock:
            self.faults.clear()
            self.seen.clear()

    def _take(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for f in self.faults:
                if f.match in path and method in f.methods and f.times != 0:
                    if f.times > 0:
                        f.times -= 1
                    return f
        return None

    def _log(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.seen.append((method, path, status))

    def requests_for(self, match: str) -> list[tuple[str, str, int]]:
        with self.lock:
            return [r for r in self.seen if match in r[1]]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
