"""Run a command and measure wall time and the peak resident memory of its whole process tree.

`/usr/bin/time -v` reports the largest single process only; a local Ray puts the work in
raylet's children, so we poll the tree and sum RSS. The tree is read from /proc (Linux; no
psutil, which this venv lacks): every process whose parent chain leads to the command, or that
is in the command's session (it is started with a new session id).

Two figures are kept, because plain RSS over-counts for this project's jobs:

* `peak_rss_bytes`: the peak of the sum of RSS over the tree (what `ps` shows). It includes
  file-backed pages (LMDB's memory map, memory-mapped spill files, shared libraries) that the
  kernel drops under pressure, and counts Ray's shared-memory object store once per process
  that maps it.
* `peak_anon_bytes`: the peak of (sum of RssAnon over the tree + the largest RssShmem of any
  one process): the memory the job really needs (heaps, arrays, the object store once).
  Both are read from /proc/<pid>/status (RSS = RssAnon + RssFile + RssShmem).

`cpu_s` is the CPU time (user + system) of the tree: per process the last value seen while
polling, summed (a process living less than one poll interval can be missed). On a machine
shared with other work, wall time stretches with the load but CPU time does not much, so it
is the steadier measure of what a job costs.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass


@dataclass
class RunStats:
    wall_s: float
    peak_rss_bytes: int
    peak_processes: int
    returncode: int
    tail: str
    peak_anon_bytes: int = 0      # sum RssAnon + max RssShmem (see module docstring)
    peak_file_bytes: int = 0      # sum RssFile at the sample with the largest RSS
    cpu_s: float = 0.0            # user + system CPU seconds of the tree (see module docstring)


def _status_kib(pid: int) -> tuple[int, int, int] | None:
    """(RssAnon, RssFile, RssShmem) in bytes from /proc/<pid>/status, or None off Linux."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            vals = {}
            for line in f:
                if line.startswith(b"Rss"):
                    k, v = line.split(b":", 1)
                    vals[k] = int(v.split()[0]) * 1024
        return vals.get(b"RssAnon", 0), vals.get(b"RssFile", 0), vals.get(b"RssShmem", 0)
    except (OSError, ValueError):
        return None


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_table() -> dict[int, tuple[int, int, float]]:
    """{pid: (ppid, session id, CPU seconds utime + stime)} of every process, from /proc/<pid>/stat."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()   # after "(comm)": state ppid pgrp session ... utime stime
        out[int(name)] = (int(fields[1]), int(fields[3]), (int(fields[11]) + int(fields[12])) / _TICK)
    return out


def _tree(root: int) -> dict[int, float]:
    """{pid: CPU seconds} of the root, its descendants, and the processes of its session."""
    table = _proc_table()
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    seen, stack = set(), [root]
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        stack.extend(kids.get(pid, ()))
    seen.update(pid for pid, (_, sid, _) in table.items() if sid == root)
    return {pid: table[pid][2] for pid in sorted(seen) if pid in table}


def _tree_rss(root: int, cpu_seen: dict[int, float]) -> tuple[int, int, int, int]:
    """(sum RSS, processes, sum anon + max shmem, sum file-backed) over the tree; records each
    process's CPU seconds in cpu_seen (the last value seen per pid)."""
    total, count, anon, shm, file_ = 0, 0, 0, 0, 0
    for pid, cpu in _tree(root).items():
        cpu_seen[pid] = cpu
        st = _status_kib(pid)
        if st is None:
            continue
        total += st[0] + st[1] + st[2]
        count += 1
        anon += st[0]
        file_ += st[1]
        shm = max(shm, st[2])
    return total, count, anon + shm, file_


def run_measured(cmd: list[str], env: dict[str, str] | None = None, poll_s: float = 0.2,
                 timeout_s: float = 3600) -> RunStats:
    """Run `cmd`, sampling the RSS of its process tree every `poll_s` seconds."""
    full_env = {**os.environ, **(env or {})}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, text=True,
                         start_new_session=True)
    peak, peak_n, peak_anon, peak_file = 0, 0, 0, 0
    cpu_seen: dict[int, float] = {}  # pid -> CPU seconds at the last poll
    out_lines: list[str] = []
    reader = threading.Thread(target=lambda: out_lines.extend(p.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    while p.poll() is None:
        rss, n, anon, file_ = _tree_rss(p.pid, cpu_seen)
        if rss > peak:
            peak, peak_file = rss, file_
        peak_n, peak_anon = max(peak_n, n), max(peak_anon, anon)
        if time.perf_counter() - t0 > timeout_s:
            p.kill()
            break
        time.sleep(poll_s)
    p.wait()
    reader.join(timeout=5)
    wall = time.perf_counter() - t0
    # Ray may leave its daemons behind when the driver exits abruptly; reap the session.
    try:
        os.killpg(p.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    return RunStats(wall, peak, peak_n, p.returncode, "".join(out_lines[-30:]), peak_anon, peak_file,
                    round(sum(cpu_seen.values()), 1))


def gib(n: int) -> float:
    return n / 1024**3


if __name__ == "__main__":
    s = run_measured(sys.argv[1:])
    print(f"wall {s.wall_s:.1f}s cpu {s.cpu_s:.1f}s peak tree RSS {gib(s.peak_rss_bytes):.2f} GiB "
          f"(anon+shm {gib(s.peak_anon_bytes):.2f} GiB) rc {s.returncode}")
