"""Shared fixtures: a small local Ray, the needs_cuda marker, tiny seeded archives."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# Keep Ray light and quiet in tests: a small object store, no usage stats.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TAGREC_OBJECT_STORE_BYTES", str(256 * 1024**2))


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # torch missing or broken: no CUDA tests
        return False


HAS_CUDA = _has_cuda()


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "needs_cuda" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    """How many cases each property test ran (tests/_fuzz.py), when any ran."""
    from _fuzz import CASES

    if CASES:
        terminalreporter.section("property-test cases run")
        for name, n in sorted(CASES.items()):
            terminalreporter.write_line(f"{name}: {n}")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, shared by the whole session and shut down at its end."""
    import ray

    from jobs._ray import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def synth_archive(tmp_path_factory):
    """Tiny seeded archives from `jobs.synth`, each built once per set of flags and shared by
    the session: `synth_archive(num_users=..., ...)` -> the archive folder (posts.parquet,
    edges.parquet, ground truth). Read-only: point --posts/--edges at it, write to your --out."""
    from jobs.synth import SynthConfig
    from jobs.synth import run as synth_run

    built: dict[tuple, Path] = {}

    def make(**flags: Any) -> Path:
        key = tuple(sorted(flags.items()))
        if key not in built:
            out = tmp_path_factory.mktemp("synth")
            synth_run(SynthConfig(out=str(out), **flags))
            built[key] = out / "archive"
        return built[key]

    return make


@pytest.fixture(scope="session")
def recsys_split(tmp_path_factory):
    """Split files and a real LMDB store from `models.recsys._synthetic` (tests/test_train_job.py's
    `write_archive`), built once per set of arguments; `recsys_split(out, **kw)` copies them into
    `out` (split/, store/) and returns the synthetic data, so each test trains in its own folder."""
    import shutil

    from test_train_job import write_archive

    built: dict[tuple, tuple[Path, Any]] = {}

    def make(out: Path, **kw: Any) -> Any:
        key = tuple(sorted(kw.items()))
        if key not in built:
            src = tmp_path_factory.mktemp("split")
            built[key] = (src, write_archive(src, **kw))
        src, synthetic = built[key]
        for name in ("split", "store"):
            if (src / name).exists():
                shutil.copytree(src / name, Path(out) / name)
        return synthetic

    return make


@pytest.fixture
def torch_one_thread():
    """Tiny tensors: one torch thread avoids spin-waiting on a 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (moto) on 127.0.0.1 for the whole session; users admin and nobody."""
    from _s3 import start_s3, stop_s3

    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    stop_s3(server)


@pytest.fixture(scope="session")
def s3_proxy(s3_server):
    """A real HTTP proxy in front of s3_server that fails chosen requests (`proxy.fail(...)`)."""
    from _s3 import FaultProxy

    proxy = FaultProxy(s3_server.url)
    yield proxy
    proxy.close()


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """This process's AWS variables set for s3_server as user admin (none of the caller's kept).

    Returns a function that switches user or endpoint: `s3_env(user="nobody", endpoint=proxy.url)`.
    Fast retries, so that tests of failing reads do not sleep for seconds.
    """
    from _s3 import AWS_VARS

    from featurestore import uri

    def use(user: str = "admin", endpoint: str = "") -> dict[str, str]:
        for k in AWS_VARS:
            monkeypatch.delenv(k, raising=False)
        env = s3_server.env(user, endpoint)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        uri.clear_cache()
        return env

    monkeypatch.setenv("TAGREC_IO_BACKOFF_S", "0.05")
    use()
    yield use
    uri.clear_cache()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """A real GCS emulator (gcp-storage-emulator, in memory) on 127.0.0.1 for the whole session."""
    from _gcs import start_gcs, stop_gcs

    server = start_gcs(tmp_path_factory.mktemp("gcs"))
    yield server
    stop_gcs(server)


@pytest.fixture
def gcs_env(gcs_server, monkeypatch):
    """This process's Google variables set for gcs_server (STORAGE_EMULATOR_HOST; none of the
    caller's kept). Returns a function that switches the endpoint: `gcs_env(endpoint=proxy.url)`.
    Fast retries, and one second of the Google client's own, so that failing reads end quickly.
    """
    from _gcs import GCS_VARS

    from featurestore import uri

    def use(endpoint: str = "") -> dict[str, str]:
        for k in GCS_VARS:
            monkeypatch.delenv(k, raising=False)
        env = gcs_server.env(endpoint)
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        uri.clear_cache()
        return env

    monkeypatch.setenv("TAGREC_IO_BACKOFF_S", "0.05")
    monkeypatch.setenv("TAGREC_GCS_RETRY_S", "1")
    use()
    yield use
    uri.clear_cache()


@pytest.fixture(params=["s3", "gs"])
def object_store(request):
    """Each object store in turn, its variables set in this process: the S3 server (as admin,
    through s3_env) or the GCS emulator (through gcs_env). Both servers take the same calls:
    `.scheme` ("s3"/"gs"), `.create_bucket`, `.put`, `.delete`, `.objects`, `.upload_tree`."""
    if request.param == "s3":
        request.getfixturevalue("s3_env")
        return request.getfixturevalue("s3_server")
    request.getfixturevalue("gcs_env")
    return request.getfixturevalue("gcs_server")


@pytest.fixture(scope="session")
def ray_cluster(s3_server, s3_proxy):
    """Three Ray nodes on this machine: head (1 CPU, `store`), two workers (1 CPU and `pool` each).

    Every node's processes read S3 through s3_proxy as user admin (so tests can fail reads on
    any node). Jobs join it with `--ray-address ray_cluster.address`.
    """
    from _ray_cluster import start_cluster, stop_cluster

    lc = start_cluster({**s3_server.env("admin", s3_proxy.url), "TAGREC_IO_BACKOFF_S": "0.05"})
    yield lc
    stop_cluster(lc)
