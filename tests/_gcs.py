"""A real GCS emulator for tests: gcp-storage-emulator (PyPI) as a subprocess on 127.0.0.1, in
memory, and a small client of its JSON API over plain HTTP (urllib), independent of the
pyarrow/google-cloud-cpp client the code under test uses. Stopped by process id, never by name.

The emulator serves the GCS JSON API without authentication: clients reach it anonymously
through STORAGE_EMULATOR_HOST, as Google's client libraries do. It cannot deny access.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from _s3 import free_port, stop_process_group, wait_until_up

# Every Google variable a developer's shell might hold: a test sees only the ones it sets.
GCS_VARS = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT",
            "CLOUD_STORAGE_EMULATOR_ENDPOINT")


def _quote(name: str) -> str:
    return urllib.parse.quote(name, safe="")


@dataclass
class GcsServer:
    url: str
    proc: subprocess.Popen
    log: Path
    scheme = "gs"

    def env(self, endpoint: str = "") -> dict[str, str]:
        """The variables a client of this emulator exports (its endpoint, no credentials)."""
        return {"STORAGE_EMULATOR_HOST": endpoint or self.url}

    def process_env(self, endpoint: str = "") -> dict[str, str]:
        """os.environ without any Google variable, plus this emulator's (for subprocesses)."""
        env = {k: v for k, v in os.environ.items() if k not in GCS_VARS}
        env.update(self.env(endpoint))
        return env

    def _call(self, method: str, path: str, body: bytes | None = None,
              content_type: str = "application/json") -> bytes:
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": content_type} if body is not None else {})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.read()

    def create_bucket(self, bucket: str) -> None:
        """Create `bucket`; one that exists already is kept as it is."""
        try:
            self._call("POST", "/storage/v1/b?project=test", json.dumps({"name": bucket}).encode())
        except urllib.error.HTTPError as e:
            if e.code != 409:
                raise

    def put(self, bucket: str, name: str, data: bytes) -> None:
        self._call("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={_quote(name)}", data,
                   "application/octet-stream")

    def get(self, bucket: str, name: str) -> bytes:
        return self._call("GET", f"/storage/v1/b/{bucket}/o/{_quote(name)}?alt=media")

    def delete(self, bucket: str, name: str) -> None:
        self._call("DELETE", f"/storage/v1/b/{bucket}/o/{_quote(name)}")

    def names(self, bucket: str, prefix: str = "") -> list[str]:
        out: list[str] = []
        token = ""
        while True:
            page = json.loads(self._call("GET", f"/storage/v1/b/{bucket}/o?prefix={_quote(prefix)}"
                                         + (f"&pageToken={_quote(token)}" if token else "")))
            out += [o["name"] for o in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return sorted(out)

    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        return {n: self.get(bucket, n) for n in self.names(bucket, prefix)}

    def upload_tree(self, folder: Path, bucket: str, prefix: str = "") -> int:
        """Upload every file under `folder` to gs://bucket/prefix/<relative path>; returns the count."""
        n = 0
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                self.put(bucket, (prefix.rstrip("/") + "/" if prefix else "") + p.relative_to(folder).as_posix(),
                         p.read_bytes())
                n += 1
        return n


def start_gcs(log_dir: Path) -> GcsServer:
    """Start gcp-storage-emulator in memory on a free port of 127.0.0.1; wait until it answers."""
    port = free_port()
    log = log_dir / "gcs-emulator.log"
    env = {k: v for k, v in os.environ.items() if k not in GCS_VARS}
    with open(log, "wb") as f:
        proc = subprocess.Popen([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                                 "--port", str(port), "--in-memory"], stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    server = GcsServer(f"http://127.0.0.1:{port}", proc, log)
    wait_until_up(proc, log, "GCS emulator", lambda: json.loads(server._call("GET", "/storage/v1/b?project=test")),
                  errors=(OSError, ValueError))
    return server


def stop_gcs(server: GcsServer) -> None:
    stop_process_group(server.proc)


# --------------------------------------------------------------------------- the proxy, in its own process


class ProxyProcess:
    """_s3.FaultProxy in a process of its own, driven over HTTP, with FaultProxy's calls.

    Needed in front of GCS: a proxy thread in the test's own process is not served while pyarrow's
    GCS client waits on it (reads through it stall until the client's timeout, as if the GIL were
    held meanwhile); in a process of its own it answers at once.
    """

    def __init__(self, upstream: str, log: Path) -> None:
        self.log = log
        with open(log, "wb") as f:
            self.proc = subprocess.Popen([sys.executable, __file__, upstream], stdout=subprocess.PIPE, stderr=f,
                                         text=True, start_new_session=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()           # the proxy prints its URL once it listens
        if not line.startswith("http://"):
            self.close()
            pytest.fail(f"fault proxy did not start:\n{log.read_text()[-3000:]}")
        self.url = line

    def _control(self, action: str, body: dict | None = None) -> list[tuple[str, str, int]]:
        from _s3 import CONTROL

        req = urllib.request.Request(self.url + CONTROL + action, data=json.dumps(body or {}).encode(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return [tuple(r) for r in json.loads(resp.read())]    # type: ignore[misc]

    def fail(self, match: str, times: int, status: int = 503, methods: tuple[str, ...] = ("GET", "HEAD")) -> None:
        self._control("fail", {"match": match, "times": times, "status": status, "methods": list(methods)})

    def clear(self) -> None:
        self._control("clear")

    def requests_for(self, match: str) -> list[tuple[str, str, int]]:
        return [r for r in self._control("seen") if match in r[1]]

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=10)


if __name__ == "__main__":                 # python tests/_gcs.py UPSTREAM: run a FaultProxy until killed
    from _s3 import FaultProxy

    running = FaultProxy(sys.argv[1])
    print(running.url, flush=True)
    running.thread.join()
