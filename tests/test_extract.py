"""`python -m jobs.extract` on a real local Ray, real JPEG/PNG files and a real LMDB store.

Small inputs (64x64 model inputs, 8 images) keep the real VGG16/YOLOv2 layers cheap on 2 CPUs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from jobs._extract_items import item_blocks, item_index
from jobs.errors import InputError
from jobs.extract import ExtractConfig, committed, run
from models.errors import ModelError
from models.views import IC_VIEW, OD_VIEW

SIZE = 64
GOOD = 6


def make_archive(root: Path, n_good: int = GOOD, seed: int = 0) -> tuple[Path, dict[str, int]]:
    """posts.parquet with n_good distinct photos (one posted twice) and one of each bad kind."""
    rng = np.random.default_rng(seed)
    img = root / "images"
    img.mkdir(parents=True)
    paths = []
    for i in range(n_good):
        # Distinct content per image (a colour ramp + noise), so a row/id mix-up changes vectors.
        a = rng.integers(0, 60, (48 + 8 * i, 64, 3)).astype(np.uint8)
        a[..., i % 3] += np.uint8(30 * i)
        p = img / f"good{i}.{'png' if i == 1 else 'jpg'}"
        Image.fromarray(a).save(p)
        paths.append(str(p))
    good = paths[0]
    (img / "empty.jpg").write_bytes(b"")
    (img / "text.jpg").write_bytes(b"this is not an image")
    (img / "trunc.jpg").write_bytes(Path(good).read_bytes()[:300])
    bomb = _huge_png_header(60_000, 60_000)
    (img / "bomb.png").write_bytes(bomb)
    bad = {"missing": str(img / "missing.jpg"), "empty": str(img / "empty.jpg"),
           "not-an-image": str(img / "text.jpg"), "truncated": str(img / "trunc.jpg"),
           "too-many-pixels": str(img / "bomb.png")}
    images = paths + [good] + list(bad.values())             # good0 posted twice
    ids = list(range(100, 100 + n_good)) + [100] + list(range(200, 200 + len(bad)))
    n = len(images)
    t = pa.table({"post_id": pa.array(range(n), pa.int64()), "user_id": pa.array([7] * n, pa.int64()),
                  "image": pa.array(images), "tags": pa.array([["t"]] * n, pa.list_(pa.string())),
                  "item_id": pa.array(ids, pa.int64())})
    pq.write_table(t, root / "posts.parquet")
    return root / "posts.parquet", {r: 1 for r in bad}


def _huge_png_header(w: int, h: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


class _Evil:
    """Unpickling this calls open(target, 'w'): a pickle that would create a file."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def write_evil_pickle(path: Path, target: Path) -> None:
    torch.save({"features.0.weight": torch.zeros(1), "payload": _Evil(str(target))}, str(path))


def config(tmp: Path, posts: Path, store: str = "store", **kw) -> ExtractConfig:
    base = dict(posts=str(posts), store=str(tmp / store), out=str(tmp / "out"), random_weights=True,
                vgg_size=SIZE, yolo_size=SIZE, batch_size=4, num_cpus=2, seed=3)
    return ExtractConfig(**{**base, **kw})


def dump(store_path: Path) -> dict:
    """Every id, value byte string and error of both views."""
    from featurestore import Store

    st = Store.open(store_path, readonly=True)
    out = {}
    for view in (IC_VIEW, OD_VIEW):
        ids, vals = [], []
        for i, v in st.reader(view).scan(batch_size=64):
            ids.append(i)
            vals.append(v)
        eids, reasons = st.errors(view)
        out[view] = (np.concatenate(ids), np.concatenate(vals), eids.tolist(), list(reasons),
                     st.describe(view).producer)
    st.close()
    return out


@pytest.fixture(scope="module")
def full_run(ray_local, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extract")
    posts, bad = make_archive(tmp / "archive")
    summary = run(config(tmp, posts))
    return tmp, posts, bad, summary


def test_summary_counts_ok_and_failures_by_reason(full_run):
    _, _, bad, s = full_run
    assert s["images"] == GOOD + len(bad)          # the photo posted twice is one item
    assert s["ok"] == GOOD and s["failed"] == len(bad)
    assert s["failed_by_reason"] == bad
    assert s["backend"] == "cpu" and s["precision"] == "fp32" and s["images_per_s"] > 0


def test_store_holds_the_features_of_each_item_s_own_image(full_run):
    """Planted signal: every stored vector equals the bare extractor run on that item's file."""
    from models.vision.decode import DecodeLimits, decode_image, read_bytes
    from models.vision.extractor import ExtractorConfig, ImageFeatureExtractor, preprocess_image

    tmp, posts, bad, _ = full_run
    got = dump(tmp / "store")
    ids, ic = got[IC_VIEW][0], got[IC_VIEW][1]
    od = got[OD_VIEW][1]
    assert ids.tolist() == list(range(100, 100 + GOOD)) and ic.shape == (GOOD, 512) and od.shape == (GOOD, 80)
    x = ImageFeatureExtractor(ExtractorConfig(random_weights=True, seed=3, backend="cpu", vgg_size=SIZE,
                                              yolo_size=SIZE, max_batch=4))
    table = pq.read_table(posts)
    path_of = dict(zip(table["item_id"].to_pylist(), table["image"].to_pylist()))
    lim = DecodeLimits(draft=SIZE)
    crops = [preprocess_image(torch.from_numpy(decode_image(read_bytes(path_of[i]), lim)), SIZE, (SIZE, SIZE))
             for i in ids]
    ref_ic, ref_od = x(torch.stack([c[0] for c in crops]), torch.stack([c[1] for c in crops]))
    np.testing.assert_array_equal(ic, ref_ic.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(od, ref_od.astype(np.float16).astype(np.float32))
    assert len({v.tobytes() for v in ic}) == GOOD          # images differ -> vectors differ
    # Errors recorded per view with their reason.
    eids, reasons = got[IC_VIEW][2], got[IC_VIEW][3]
    assert eids == list(range(200, 200 + len(bad))) and sorted(reasons) == sorted(bad)
    producer = got[IC_VIEW][4]
    assert producer["weights"] == "random weights (seed 3)" and producer["backend"] == "cpu"
    assert "center crop 64" in producer["preprocessing"] and "ImageNet" in producer["preprocessing"]


def test_rerun_skips_committed_and_limit_then_resume_matches(full_run):
    tmp, posts, _, _ = full_run
    again = run(config(tmp, posts))                                 # nothing new: all committed
    assert again["skipped_committed"] == GOOD and again["ok"] == 0
    s1 = run(config(tmp, posts, store="resumed", limit=3))           # stopped early ...
    assert s1["processed"] == 3
    s2 = run(config(tmp, posts, store="resumed"))                    # ... then resumed
    assert s2["skipped_committed"] == 3 - s1["failed"] and s2["ok"] + s1["ok"] == GOOD
    a, b = dump(tmp / "store"), dump(tmp / "resumed")
    for view in (IC_VIEW, OD_VIEW):
        np.testing.assert_array_equal(a[view][0], b[view][0])
        assert a[view][1].tobytes() == b[view][1].tobytes()          # bit-identical values
        assert a[view][2:4] == b[view][2:4]


def test_committed_lookup_in_chunks_matches_the_store(full_run):
    from featurestore import Store

    tmp, _, bad, _ = full_run
    ids = np.array([99, 100, 101, 150, 200, 103, 105, 104, 7], np.int64)   # 200: an error record, not a value
    with Store.open(tmp / "store") as st, st.writer(IC_VIEW) as w_ic, st.writer(OD_VIEW) as w_od:
        want = w_ic.existing(ids) & w_od.existing(ids)
        assert want.tolist() == [False, True, True, False, False, True, True, True, False]
        for chunk in (1, 2, 4, 100):
            assert committed(w_ic, w_od, ids, chunk=chunk).tolist() == want.tolist()


def test_item_index_and_blocks_stream_the_manifest(tmp_path):
    """Distinct items (ids derived from images) and their first rows, streamed in 20-row batches
    over 32-row groups; blocks carry each item's own absolute path, in manifest order."""
    from jobs.contract import read_posts

    n = 300
    images = [f"img/{(i * 37) % 97}.jpg" for i in range(n)]          # 97 photos, most posted 3-4 times
    t = pa.table({"post_id": pa.array(np.arange(n) + 1000), "user_id": pa.array(np.arange(n) % 11),
                  "image": pa.array(images), "tags": pa.array([["t"]] * n, pa.list_(pa.string()))})
    path = tmp_path / "posts.parquet"
    pq.write_table(t, path, row_group_size=32)
    full = read_posts(path)                                            # the whole-table reference
    item_of_row = full.column("item_id").to_numpy()
    want_ids, want_rows = np.unique(item_of_row, return_index=True)
    ids, rows = item_index(path, batch_rows=20)
    assert len(ids) == 97
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(rows, want_rows)
    sel = np.flatnonzero(np.arange(len(ids)) % 3 != 1)                 # some items already done
    path_of_row = full.column("image").to_pylist()
    for window in (0, 21, 10):                                          # 1, 4 and 7 passes over the manifest
        blocks = list(item_blocks(path, ids[sel], rows[sel], per_block=7, batch_rows=20, window=window))
        assert [b.num_rows for b in blocks[:-1]] == [7] * (len(blocks) - 1) and 0 < blocks[-1].num_rows <= 7
        got = pa.concat_tables(blocks)
        assert got.schema.types == [pa.int64(), pa.string()]
        assert got.column("item_id").to_numpy().tolist() == ids[sel].tolist()      # key order kept
        assert got.column("image").to_pylist() == [path_of_row[r] for r in rows[sel]]
    assert got.column("image")[0].as_py() == str(tmp_path.resolve() / images[rows[sel][0]])


@pytest.mark.parametrize("internals_moved", [False, True])
def test_dataset_from_blocks_holds_every_row_whichever_route(ray_local, monkeypatch, internals_moved):
    """The dataset built from Ray Data's internals, or (when they moved) the public
    from_arrow_refs route, holds every block's rows in order."""
    import ray.data.dataset

    from jobs._extract_actor import dataset_from_blocks

    if internals_moved:
        def moved(*a, **k):
            raise TypeError("MaterializedDataset() signature changed")
        monkeypatch.setattr(ray.data.dataset, "MaterializedDataset", moved)
    blocks = [pa.table({"item_id": pa.array(np.arange(s, s + 5), pa.int64()),
                        "image": pa.array([f"img{i}.jpg" for i in range(s, s + 5)])}) for s in (0, 5, 10)]
    ds = dataset_from_blocks(iter(blocks))
    got = ds.to_arrow_refs()
    import ray

    table = pa.concat_tables(ray.get(got))
    assert table.column("item_id").to_pylist() == list(range(15))
    assert table.column("image").to_pylist()[-1] == "img14.jpg"


def test_bad_manifest_is_refused_before_ray_with_the_contract_message(tmp_path):
    n = 20
    t = pa.table({"post_id": pa.array(np.r_[np.arange(n - 1), 3]), "user_id": pa.array(np.zeros(n, np.int64)),
                  "image": pa.array([f"{i}.jpg" for i in range(n)]), "tags": pa.array([["t"]] * n, pa.list_(pa.string()))})
    pq.write_table(t, tmp_path / "posts.parquet", row_group_size=4)       # the duplicate 3 spans groups
    with pytest.raises(InputError, match=r"'post_id' must be unique; 1 duplicated value\(s\): \[3\]"):
        run(config(tmp_path, tmp_path / "posts.parquet"))
    assert not (tmp_path / "store").exists()


def test_refuses_without_weights(tmp_path):
    posts, _ = make_archive(tmp_path / "a", n_good=1)
    with pytest.raises(ModelError, match="--random-weights"):
        run(config(tmp_path, posts, random_weights=False))


def test_job_refuses_a_code_running_pickle_and_nothing_runs(tmp_path):
    posts, _ = make_archive(tmp_path / "a", n_good=1)
    target = tmp_path / "created_by_pickle.txt"
    write_evil_pickle(tmp_path / "vgg16.pth", target)
    with pytest.raises(ModelError, match="refused"):
        run(config(tmp_path, posts, vgg_weights=str(tmp_path / "vgg16.pth")))
    assert not target.exists()
    assert not (tmp_path / "store").exists()                  # refused before any work


def test_cli_refuses_the_pickle_with_exit_code_2(tmp_path):
    posts, _ = make_archive(tmp_path / "a", n_good=1)
    target = tmp_path / "created_by_pickle.txt"
    write_evil_pickle(tmp_path / "yolo.pt", target)
    r = subprocess.run([sys.executable, "-m", "jobs.extract", "--posts", str(posts), "--out", str(tmp_path / "o"),
                        "--random-weights", "--yolo-weights", str(tmp_path / "yolo.pt")],
                       cwd=Path(__file__).parents[1], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: extract: --yolo-weights file") and "refused" in last
    assert not target.exists()


def test_weights_files_are_recorded_by_digest(tmp_path):
    from models.vision.extractor import ExtractorConfig, check_weights, plan_producers
    from models.vision.vgg import VGG16GAP
    from models.vision.weights import file_digest, save_state_dict

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in VGG16GAP().state_dict().items()}
    save_state_dict({k: torch.zeros(s) for k, s in shapes.items()}, tmp_path / "vgg.safetensors")
    cfg = ExtractorConfig(vgg_weights=str(tmp_path / "vgg.safetensors"), random_weights=True)
    p = plan_producers(cfg, "cuda", check_weights(cfg))
    assert p["vgg16"]["weights"] == file_digest(tmp_path / "vgg.safetensors")
    assert p["yolo"]["weights"] == "random weights (seed 0)" and p["vgg16"]["precision"] == "fp16"


@pytest.mark.slow
def test_sigkill_midway_then_rerun_matches_uninterrupted(full_run, tmp_path):
    """Kill -9 a job process after its first commits; the re-run ends with the same store."""
    from featurestore import Store

    tmp, posts, _, _ = full_run
    store = tmp_path / "killed"
    args = [sys.executable, "-m", "jobs.extract", "--posts", str(posts), "--store", str(store),
            "--out", str(tmp_path / "out"), "--random-weights", "--seed", "3", "--vgg-size", str(SIZE),
            "--yolo-size", str(SIZE), "--batch-size", "2", "--num-cpus", "2"]
    env = {**os.environ, "RAY_ADDRESS": ""}
    proc = subprocess.Popen(args, env=env, cwd=Path(__file__).parents[1], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    killed_with = 0
    try:
        for _ in range(1200):                         # up to ~120 s: wait for a first commit
            if proc.poll() is not None:
                break
            if store.exists():
                try:
                    with Store.open(store, readonly=True) as st:
                        n = st.describe(OD_VIEW).count if OD_VIEW in st.list_views() else 0
                except Exception:  # noqa: BLE001 — store being created
                    n = 0
                if 0 < n:
                    os.killpg(proc.pid, signal.SIGKILL)
                    killed_with = n
                    break
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_with > 0, "the job never committed a batch"
    rc = subprocess.run(args, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True)
    assert rc.returncode == 0, rc.stderr[-2000:]
    a, b = dump(tmp / "store"), dump(store)
    for view in (IC_VIEW, OD_VIEW):
        np.testing.assert_array_equal(a[view][0], b[view][0])
        assert a[view][1].tobytes() == b[view][1].tobytes()
        assert a[view][2:4] == b[view][2:4]


def test_gpu_decode_actor_path_on_cpu(tmp_path):
    """The GPU actor's code path (bytes -> one batched torchvision decode_jpeg -> preprocess on the
    device -> models), run here with device "cpu", against the CPU-decode path on the same files."""
    from jobs._extract_actor import FeatureActor, decode_batch, read_batch
    from models.vision.extractor import ExtractorConfig

    posts, bad = make_archive(tmp_path / "a", n_good=3)
    t = pq.read_table(posts)
    batch = {"item_id": np.array(t["item_id"].to_pylist()), "image": np.array(t["image"].to_pylist(), dtype=object)}
    ecfg = ExtractorConfig(random_weights=True, seed=3, backend="cpu", vgg_size=SIZE, yolo_size=SIZE, max_batch=4)
    lim = {"max_pixels": 64_000_000, "max_bytes": 1 << 20}
    gpu_like = FeatureActor(ecfg, decode_on_device=True, **lim)
    out_dev = gpu_like(read_batch(batch, max_bytes=lim["max_bytes"]))
    gpu_like.decode_on_device = False             # same models, CPU decode tasks' output instead
    out_cpu = gpu_like(decode_batch(batch, SIZE, (SIZE, SIZE), **lim))
    assert list(out_dev["error"]) == list(out_cpu["error"])
    ok = out_dev["error"] == ""
    assert ok.sum() == 4 and sorted(set(out_dev["error"][~ok])) == sorted(bad)   # 3 photos + the repost
    a, b = out_dev["vgg16"][ok].astype(np.float32), out_cpu["vgg16"][ok].astype(np.float32)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.99                        # libjpeg via torchvision vs PIL: tiny differences
