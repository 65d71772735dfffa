"""jobs.synth: contract schema, determinism, real images, planted signals, bad flags."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from jobs import _synth_images as synth_images
from jobs._cli import run_job
from jobs._synth_images import MAX_TAGS, make_feature_model, synthetic_features
from jobs._synth_posts import first_unique, image_strings
from jobs.synth import SynthConfig
from jobs.synth import run as synth

SMALL = dict(num_users=60, num_posts=400, num_tags=40, num_communities=4, image_size="96x72", workers=1)


def _archive(tmp: Path, **kw) -> tuple[Path, dict]:
    cfg = SynthConfig(out=str(tmp), **{**SMALL, **kw})
    summary = synth(cfg)
    return tmp / "archive", summary


@pytest.fixture(scope="module")
def images_archive(tmp_path_factory) -> tuple[Path, dict]:
    """The demo-sized archive with real (small) image files."""
    return _archive(tmp_path_factory.mktemp("synth_img"), shared_items_frac=0.1)


@pytest.fixture(scope="module")
def stats_archive(tmp_path_factory) -> Path:
    """A larger archive without images, for the statistical signals."""
    root, _ = _archive(tmp_path_factory.mktemp("synth_stats"), num_users=1000, num_posts=20_000,
                       num_tags=300, num_communities=5, images=False)
    return root


def _posts(root: Path) -> pl.DataFrame:
    return pl.from_arrow(pq.read_table(root / "posts.parquet"))


# --------------------------------------------------------------------------- schema


def test_schema_matches_the_contract(images_archive):
    root, summary = images_archive
    posts = pq.read_table(root / "posts.parquet")
    assert posts.schema.field("post_id").type == pa.int64()
    assert posts.schema.field("user_id").type == pa.int64()
    assert posts.schema.field("image").type == pa.string()
    assert posts.schema.field("tags").type == pa.list_(pa.string())
    assert "item_id" not in posts.schema.names          # by default the contract derives items
    assert posts.num_rows == 400 and len(set(posts["post_id"].to_pylist())) == 400
    assert posts.column("post_id").null_count == 0 and posts.column("user_id").null_count == 0
    edges = pq.read_table(root / "edges.parquet")
    assert edges.schema.field("src").type == pa.int64() and edges.schema.field("dst").type == pa.int64()
    assert edges.schema.field("weight").type == pa.float32()
    src, dst = edges["src"].to_numpy(), edges["dst"].to_numpy()
    assert (src != dst).all() and len(np.unique(src * 10**9 + dst)) == len(src)
    users = set(posts["user_id"].to_pylist())
    assert len(users) == 60 and set(src) <= users and set(dst) <= users
    # every user posts; some posts untagged; tags per post 0..6
    n = np.array([len(t) for t in posts["tags"].to_pylist()])
    assert n.max() <= MAX_TAGS and 0 < (n == 0).sum() < 60 and (n >= 2).sum() > 100
    meta = json.loads((root / "archive.json").read_text())
    assert meta["params"]["num_posts"] == 400 and meta["counts"]["posts"] == 400
    truth = pq.read_table(root / "users.parquet")
    assert truth.num_rows == 60 and set(truth["community"].to_pylist()) == {0, 1, 2, 3}
    hidden = pq.read_table(root / "untagged_truth.parquet")
    assert hidden.num_rows == (n == 0).sum() and all(len(t) >= 1 for t in hidden["tags"].to_pylist())
    assert summary["untagged_posts"] == hidden.num_rows


def test_the_contract_validator_accepts_it(images_archive):
    contract = pytest.importorskip("jobs.contract")
    root, _ = images_archive
    posts = contract.read_posts(root / "posts.parquet")
    assert posts.num_rows == 400
    # shared photos: fewer items than posts, same image => same item
    assert len(np.unique(posts["item_id"].to_numpy())) == len(set(posts["image"].to_pylist())) < 400
    _, report = contract.read_edges(root / "edges.parquet", np.unique(posts["user_id"].to_numpy()))
    assert report.unknown_users == 0 and report.self_loops == 0 and report.duplicates == 0


def test_row_groups_stream(tmp_path):
    root, _ = _archive(tmp_path, num_users=500, num_posts=70_000, num_tags=100, images=False)
    f = pq.ParquetFile(root / "posts.parquet")
    assert f.metadata.num_row_groups == 2 and f.metadata.row_group(0).num_rows == 65_536


# --------------------------------------------------------------------------- images


def test_images_decode_with_varied_sizes_and_modes(images_archive):
    root, summary = images_archive
    posts = pq.read_table(root / "posts.parquet")
    paths = sorted(set(posts["image"].to_pylist()))
    assert summary["images_written"] == len(paths) == summary["distinct_images"]
    sizes, modes, formats = [], set(), set()
    for p in paths:
        with Image.open(root / p) as im:
            im.load()
            sizes.append(im.size)
            modes.add(im.mode)
            formats.add(im.format)
            assert p.endswith(".png") == (im.format == "PNG")
    w, h = np.array(sizes).T
    assert modes == {"RGB", "L"} and formats == {"JPEG", "PNG"}
    assert 80 < w.mean() < 110 and 60 < h.mean() < 85        # around the asked 96x72
    assert len(set(sizes)) > 50 and (h > w).any() and (h == w).any()   # varied, some portrait/square
    assert not list(root.rglob("*.tmp"))


def test_shared_photos_are_posted_by_several_users(images_archive):
    root, summary = images_archive
    posts = _posts(root)
    by_image = posts.group_by("image").agg(pl.col("user_id").n_unique().alias("users"), pl.len().alias("n"))
    shared = by_image.filter(pl.col("n") > 1)
    assert summary["shared_posts"] > 10 and shared.height > 0
    assert (shared["users"] == shared["n"]).all()            # never the same user twice


def test_image_colour_depends_on_tags(images_archive):
    """Mean colour of images showing visual tag A differs from the rest far more than under shuffled tags."""
    root, _ = images_archive
    posts = _posts(root).filter(pl.col("tags").list.len() > 0).unique("image", keep="first", maintain_order=True)
    rgb = np.stack([np.asarray(Image.open(root / p).convert("RGB"), np.float32).mean((0, 1))
                    for p in posts["image"]])                  # (n, 3)
    tags = posts["tags"].to_list()
    visual = set(pl.from_arrow(pq.read_table(root / "tags.parquet")).filter(pl.col("visual"))["tag"])
    top = [t for t in posts.explode("tags")["tags"].value_counts(sort=True)["tags"] if t in visual][:6]

    def gap(tag_lists) -> float:
        d = []
        for t in top:
            has = np.array([t in ts for ts in tag_lists])
            d.append(np.abs(rgb[has].mean(0) - rgb[~has].mean(0)).max())
        return float(np.mean(d))

    real = gap(tags)
    rng = np.random.default_rng(0)
    null = [gap([tags[i] for i in rng.permutation(len(tags))]) for _ in range(10)]
    assert real > 1.8 * max(null), (real, null)


def test_nonvisual_tags_are_each_communitys_most_used_and_leave_images_grey(images_archive):
    """Place/event tags (--nonvisual-frac, default 0.25) never show: a photo tagged only with them is grey."""
    root, summary = images_archive
    tags = pl.from_arrow(pq.read_table(root / "tags.parquet"))
    per_comm = tags.group_by("community").agg(pl.len().alias("n"), (~pl.col("visual")).sum().alias("nv"),
                                              pl.col("tag").filter(~pl.col("visual")).alias("nv_tags"),
                                              pl.col("popularity").filter(pl.col("visual")).max().alias("vis_max"),
                                              pl.col("popularity").filter(~pl.col("visual")).min().alias("nv_min"))
    assert (per_comm["nv"] == (0.25 * per_comm["n"]).round()).all() and per_comm["nv"].min() >= 1
    assert (per_comm["nv_min"] > per_comm["vis_max"]).all()       # the head of each community's slice
    assert summary["nonvisual_tags"] == int(per_comm["nv"].sum()) and 0.2 < summary["nonvisual_tag_use_frac"] < 0.8
    nonvisual = set(tags.filter(~pl.col("visual"))["tag"])
    posts = _posts(root).filter((pl.len().over("image") == 1) & (pl.col("tags").list.len() > 0))  # unshared photos

    def chroma(p: str) -> float:                                  # mean |R-G| + |G-B| over the pixels
        a = np.asarray(Image.open(root / p).convert("RGB"), np.float32)
        return float(np.abs(a[..., 0] - a[..., 1]).mean() + np.abs(a[..., 1] - a[..., 2]).mean())

    only_nv = [p for p, ts in zip(posts["image"], posts["tags"]) if set(ts) <= nonvisual]
    some_vis = [p for p, ts in zip(posts["image"], posts["tags"]) if not set(ts) <= nonvisual][:60]
    assert len(only_nv) >= 10
    assert max(chroma(p) for p in only_nv) < 2.0                  # neutral grey, whatever the tags
    assert np.median([chroma(p) for p in some_vis]) > 20.0


def test_features_ignore_nonvisual_tags(tmp_path):
    """With --write-features, a tag's direction shows in z only when the tag is visual."""
    fs = pytest.importorskip("featurestore")
    from jobs._synth_world import stream

    root, _ = _archive(tmp_path, num_users=50, num_posts=600, num_tags=30, images=False, write_features=True)
    posts = _posts(root).filter(pl.col("tags").list.len() > 0)
    vocab = pl.from_arrow(pq.read_table(root / "tags.parquet"))
    index = {t: i for i, t in enumerate(vocab["tag"])}
    visual = vocab["visual"].to_numpy()
    directions = make_feature_model(30, stream(0, 9)).directions           # the generator's own model
    store = fs.Store.open(str(tmp_path / "store"), readonly=True)
    z, found = store.reader("image/vgg16@1").get_many(posts["item_id"].to_numpy())
    assert found.all()
    proj = z @ directions.T                                               # (n, T)
    on = {True: [], False: []}
    for row, ts in zip(proj, posts["tags"]):
        for t in ts:
            on[bool(visual[index[t]])].append(row[index[t]])
    absent = np.median(proj)
    assert np.median(on[True]) > absent + 150                             # measured ~260 (ReLU halves ~512)
    assert abs(np.median(on[False]) - absent) < 60                        # no more than an absent tag


def test_nonvisual_frac_zero_keeps_every_tag_visual_and_the_posts(tmp_path):
    a, _ = _archive(tmp_path / "a", images=False, nonvisual_frac=0.0)
    b, _ = _archive(tmp_path / "b", images=False)
    assert pq.read_table(a / "tags.parquet")["visual"].to_numpy().all()
    assert (a / "posts.parquet").read_bytes() == (b / "posts.parquet").read_bytes()   # only images move


# --------------------------------------------------------------------------- determinism


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_whatever_the_workers(tmp_path, monkeypatch):
    kw = dict(num_users=12, num_posts=300, num_tags=15, num_communities=3, image_size="64x48",
              shared_items_frac=0.2)
    a, _ = _archive(tmp_path / "a", **{**kw, "workers": 1})
    monkeypatch.setattr(synth_images, "POOL_MIN_IMAGES", 0)
    b, _ = _archive(tmp_path / "b", **{**kw, "workers": 2})      # a real process pool
    c, _ = _archive(tmp_path / "c", **{**kw, "workers": 1, "seed": 1})
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert fa.keys() == fb.keys() and all(fa[k] == fb[k] for k in fa)
    assert fa["posts.parquet"] != fc["posts.parquet"] and fa["edges.parquet"] != fc["edges.parquet"]


def test_rerun_keeps_images_and_new_flags_redraw(tmp_path):
    kw = dict(num_users=10, num_posts=40, num_tags=10, num_communities=2, image_size="48x48")
    _, s1 = _archive(tmp_path, **kw)
    _, s2 = _archive(tmp_path, **kw)
    assert s1["images_written"] == 40 and s2["images_written"] == 0 and s2["images_kept"] == 40
    # a killed run: some images missing; the re-run draws exactly those, byte-identical
    root = tmp_path / "archive"
    gone = sorted((root / "images").rglob("*.*"))[:5]
    before = {p: p.read_bytes() for p in gone}
    for p in gone:
        p.unlink()
    _, s_resumed = _archive(tmp_path, **kw)
    assert s_resumed["images_written"] == 5 and all(p.read_bytes() == b for p, b in before.items())
    root, s3 = _archive(tmp_path, **{**kw, "num_posts": 20})
    assert s3["images_written"] == 20 and len(list((root / "images").rglob("*.*"))) == 20


def test_posts_and_archive_paths(tmp_path):
    kw = dict(num_users=5, num_posts=20, num_tags=5, num_communities=1, image_size="32x32")
    synth(SynthConfig(out=str(tmp_path / "o"), archive=str(tmp_path / "arch"), **kw))
    assert (tmp_path / "arch" / "posts.parquet").is_file() and (tmp_path / "arch" / "images").is_dir()
    synth(SynthConfig(out=str(tmp_path / "o"), posts=str(tmp_path / "p" / "my.parquet"),
                      edges=str(tmp_path / "e" / "g.parquet"), **kw))
    posts = pq.read_table(tmp_path / "p" / "my.parquet")
    assert (tmp_path / "e" / "g.parquet").is_file() and (tmp_path / "p" / "archive.json").is_file()
    assert all((tmp_path / "p" / img).is_file() for img in posts["image"].to_pylist())


def test_no_images_at_scale_writes_no_files(tmp_path):
    root, s = _archive(tmp_path, num_users=5000, num_posts=100_000, num_tags=2000, num_communities=20,
                       images=False, shared_items_frac=0.05)
    assert not (root / "images").exists() and s["images_written"] == 0
    f = pq.ParquetFile(root / "posts.parquet")
    assert f.metadata.num_rows == 100_000
    first = f.read_row_group(0, columns=["image"])["image"].to_pylist()[:3]
    assert first == ["images/000/0.jpg", "images/000/1.jpg", "images/000/2.jpg"] or all(
        x.startswith("images/") for x in first)


# --------------------------------------------------------------------------- planted signals


def test_connected_users_tag_alike(stats_archive):
    posts, edges = _posts(stats_archive), pl.from_arrow(pq.read_table(stats_archive / "edges.parquet"))
    sets = {u: set(ts) for u, ts in posts.explode("tags").drop_nulls("tags").group_by("user_id")
            .agg(pl.col("tags").unique()).iter_rows()}

    def jaccard(pairs) -> float:
        pairs = [(sets.get(a, set()), sets.get(b, set())) for a, b in pairs]
        return float(np.mean([len(x & y) / max(len(x | y), 1) for x, y in pairs]))

    users = np.array(sorted(sets))
    rng = np.random.default_rng(0)
    linked = jaccard(zip(edges["src"], edges["dst"]))
    random = jaccard(rng.choice(users, (len(edges), 2)))
    assert linked > 1.2 * random, (linked, random)


def test_follows_mostly_inside_communities_and_degrees_are_heavy_tailed(stats_archive):
    edges = pq.read_table(stats_archive / "edges.parquet")
    users = pl.from_arrow(pq.read_table(stats_archive / "users.parquet"))
    comm = dict(zip(users["user_id"], users["community"]))
    src, dst = edges["src"].to_numpy(), edges["dst"].to_numpy()
    inside = np.mean([comm[a] == comm[b] for a, b in zip(src, dst)])
    assert 0.75 < inside < 0.95                              # asked 0.85; random would be 0.2
    indeg = np.bincount(np.searchsorted(np.sort(users["user_id"].to_numpy()), dst), minlength=1000)
    assert indeg.max() > 8 * np.median(indeg)                # hubs: a power-law tail


def test_tag_frequencies_have_a_long_tail(stats_archive):
    counts = _posts(stats_archive).explode("tags").drop_nulls("tags")["tags"].value_counts(sort=True)["count"]
    c = counts.to_numpy()
    assert len(c) > 250                                      # most of the 300 tags occur
    assert c[0] > 20 * np.median(c) and c[: len(c) // 10].sum() > 0.35 * c.sum()


def test_users_have_personal_tags(stats_archive):
    """A user's personal tags show up in their own posts far more than in other users' posts."""
    posts = _posts(stats_archive).explode("tags").drop_nulls("tags")
    users = pl.from_arrow(pq.read_table(stats_archive / "users.parquet"))
    own = users.select("user_id", pl.col("personal_tags").list.slice(0, 3)).explode("personal_tags")
    mine = posts.join(own, left_on=["user_id", "tags"], right_on=["user_id", "personal_tags"]).height
    shift = users.select(pl.col("user_id").shift(1).alias("user_id"),
                         pl.col("personal_tags").list.slice(0, 3)).drop_nulls().explode("personal_tags")
    theirs = posts.join(shift, left_on=["user_id", "tags"], right_on=["user_id", "personal_tags"]).height
    assert mine > 2 * theirs, (mine, theirs)


def test_synthetic_features_carry_tag_signal():
    rng = np.random.default_rng(0)
    model = make_feature_model(20, rng)
    tags = np.full((2000, MAX_TAGS), -1, np.int32)
    tags[:, 0] = rng.integers(0, 20, 2000)
    z, o = synthetic_features(tags, model, rng)
    assert z.shape == (2000, 512) and o.shape == (2000, 80) and (z >= 0).all() and ((0 <= o) & (o <= 1)).all()
    # nearest tag direction recovers the tag from z; the argmax class from o
    assert (np.argmax(z @ model.directions.T, 1) == tags[:, 0]).mean() > 0.9
    assert (np.argmax(o, 1) == np.argmax(model.class_logit[tags[:, 0]], 1)).mean() > 0.8


def test_write_features_fills_the_store(tmp_path):
    fs = pytest.importorskip("featurestore")
    root, s = _archive(tmp_path, num_users=50, num_posts=600, num_tags=30, images=False, write_features=True,
                       shared_items_frac=0.2)
    posts = _posts(root)
    items = np.unique(posts["item_id"].to_numpy())
    assert s["features_written"] == len(items) < 600
    assert posts.group_by("image").agg(pl.col("item_id").n_unique())["item_id"].max() == 1
    store = fs.Store.open(str(tmp_path / "store"), readonly=True)
    for view, dim in (("image/vgg16@1", 512), ("image/yolo@1", 80)):
        info = store.describe(view)
        assert info.dim == dim and info.count == len(items) and info.producer["model"] == "synthetic"
        vals, found = store.reader(view).get_many(items)
        assert found.all() and np.isfinite(vals).all()


# --------------------------------------------------------------------------- pieces


def test_first_unique_keeps_order_and_count():
    cand = np.array([[3, 3, 5, 1, 5, 2], [7, 7, 7, 7, 7, 7], [-1, 4, 4, 9, 8, 6]], np.int32)
    out = first_unique(cand, np.array([3, 2, 6]))
    assert out.tolist() == [[3, 5, 1, -1, -1, -1], [7, -1, -1, -1, -1, -1], [4, 9, 8, 6, -1, -1]]


def test_image_strings_match_the_renderer():
    from jobs._synth_images import image_relpath

    n, png = np.array([0, 999, 1000, 123456]), np.array([False, True, False, True])
    assert image_strings(n, png).to_pylist() == [image_relpath(int(a), bool(b)) for a, b in zip(n, png)]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("argv, needle", [
    (["--num-users", "20", "--num-posts", "10"], "--num-posts (10) must be >= --num-users (20)"),
    (["--num-users", "0"], "--num-users"),
    (["--num-tags", "0"], "--num-tags"),
    (["--num-communities", "0"], "--num-communities"),
    (["--num-communities", "100"], "--num-communities"),
    (["--image-size", "big"], "--image-size"),
    (["--image-size", "8x8"], "--image-size"),
    (["--untagged-frac", "1.5"], "--untagged-frac"),
    (["--shared-items-frac", "-0.1"], "--shared-items-frac"),
    (["--within-community", "2"], "--within-community"),
    (["--nonvisual-frac", "1.5"], "--nonvisual-frac"),
    (["--nonvisual-frac", "-0.1"], "--nonvisual-frac"),
    (["--seed", "-1"], "--seed"),
    (["--workers", "-2"], "--workers"),
    (["--posts", "400"], "--num-posts 400"),
    (["--write-features"], "--write-features needs --no-images"),
    (["--num-posts", "many"], "--num_posts"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, capsys, argv, needle):
    code = run_job("synth", SynthConfig, synth, ["--out", str(tmp_path), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: synth:"), err
    assert needle in err[0] or needle.replace("_", "-") in err[0], err[0]


def test_refuses_to_overwrite_a_foreign_archive(tmp_path, capsys):
    (tmp_path / "archive").mkdir()
    pq.write_table(pa.table({"post_id": [1]}), tmp_path / "archive" / "posts.parquet")
    code = run_job("synth", SynthConfig, synth, ["--out", str(tmp_path), "--no-images"])
    assert code == 2 and "not written by jobs.synth" in capsys.readouterr().err


def test_python_callers_may_say_no_images():
    assert SynthConfig(no_images=True).images is False and SynthConfig().images is True
    assert "no_images" not in {f.name for f in dataclasses.fields(SynthConfig)}
