"""A private Ray head for tests: `ray start --head --block` on free ports, stopped by process tree.

Never `ray stop`, which would kill every Ray on the machine, other test runs' included.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

RAY = str(Path(sys.executable).with_name("ray"))
HEAD_START_TIMEOUT_S = 90
# Where Ray records the address of the head started last with its default temp dir.
RAY_CURRENT_CLUSTER = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"


@dataclass
class RayHead:
    """A private Ray head; `env` is what a CI client would export."""

    proc: subprocess.Popen
    temp_dir: Path
    dashboard_url: str
    env: dict[str, str]
    log: Path
    gcs_address: str  # host:port, what `ray.init(address=...)` takes


def _free_ports(n: int) -> list[int]:
    """n distinct free TCP ports (held open together so they differ, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _stat(pid: int) -> list[str] | None:
    """/proc/<pid>/stat fields after the (name), or None when gone: [state, ppid, ...]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
    except OSError:
        return None


def _descendants(pid: int) -> dict[int, str]:
    """pid's process tree as {pid: start time}; Ray's workers sit in their own sessions but stay children.

    The start time identifies a process, so a pid reused after it exits is never signalled.
    """
    kids: dict[int, list[int]] = {}
    start: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit() and (st := _stat(int(d.name))) is not None:
            kids.setdefault(int(st[1]), []).append(int(d.name))
            start[int(d.name)] = st[19]  # field 22, starttime
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        if p in start:
            out[p] = start[p]
        todo.extend(kids.get(p, []))
    return out


def _alive(pid: int, started: str) -> bool:
    st = _stat(pid)
    return st is not None and st[0] != "Z" and st[19] == started


def _signal(procs: dict[int, str], sig: int) -> None:
    for p, started in procs.items():
        if _alive(p, started):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass


def _wait_dashboard(url: str, proc: subprocess.Popen, log: Path) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start --head exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/api/version", timeout=2):
                return
        except urllib.error.HTTPError:  # 401 (token auth) means the server is up
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"Ray dashboard at {url} not up after {HEAD_START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


def start_head(num_cpus: int = 2, *, dashboard: bool = True, default_temp_dir: bool = False) -> RayHead:
    """Start a head with token auth and a "store" resource, like cluster.yaml's head.

    default_temp_dir: use Ray's default temp dir, as a developer's plain `ray start --head` does,
    so that `ray.init()` on this machine would find it; otherwise a private one (Ray's unix
    sockets live under it, so it is short: the path limit is ~107 bytes).
    """
    temp_dir = Path(tempfile.mkdtemp(prefix="rayjob-", dir="/tmp"))
    gcs, dash, client, agent = _free_ports(4)
    token = secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update({
        # `python` in the entrypoint must be this venv's, as the cluster's setup puts it first.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": token,
    })
    log = temp_dir / "ray-start.log"
    cmd = [RAY, "start", "--head", "--block", f"--port={gcs}", f"--dashboard-port={dash}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
           f"--num-cpus={num_cpus}", "--num-gpus=0", f"--include-dashboard={str(dashboard).lower()}",
           "--dashboard-host=127.0.0.1", '--resources={"store": 1}', "--object-store-memory=200000000",
           "--disable-usage-stats"]
    if not default_temp_dir:
        cmd.append(f"--temp-dir={temp_dir}")
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=temp_dir,
                                start_new_session=True)
    head = RayHead(proc, temp_dir, f"http://127.0.0.1:{dash}", env, log, f"127.0.0.1:{gcs}")
    try:
        if dashboard:
            _wait_dashboard(head.dashboard_url, proc, log)
        else:
            _wait_port(gcs, proc, log)
    except BaseException:
        stop_head(head)
        raise
    return head


def _wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + HEAD_START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start --head exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    pytest.fail(f"Ray head on port {port} not up after {HEAD_START_TIMEOUT_S}s:\n{log.read_text()[-4000:]}")


def stop_head(head: RayHead, grace_s: float = 10.0) -> None:
    """SIGTERM this head's process tree, SIGKILL what is left after grace_s; remove its temp dir."""
    procs = {p: t for p, t in _descendants(head.proc.pid).items() if p != os.getpid()}
    _signal(procs, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p, t) for p, t in procs.items()):
        head.proc.poll()  # reap `ray start` itself
        time.sleep(0.2)
    _signal(procs, signal.SIGKILL)
    try:
        head.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    try:  # a head on Ray's default temp dir leaves its address behind; it names a dead cluster now
        if RAY_CURRENT_CLUSTER.read_text().strip().endswith(":" + head.gcs_address.rsplit(":", 1)[1]):
            RAY_CURRENT_CLUSTER.unlink()
    except OSError:
        pass


