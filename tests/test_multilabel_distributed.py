"""The multi-label nets (Salehi & Kaitha) trained like the BPR models: data-parallel on Ray
workers, checkpointed with their momentum, and learning at the paper's settings on small archives."""

from __future__ import annotations

import logging
import threading

import numpy as np
import pytest
import torch
from test_recsys_distributed import ThreadSync
from test_train_job import SN_DIM, _most_popular_f1, cfg, write_archive

from jobs import train as jt
from jobs.errors import JobError
from models.errors import ModelError
from models.recsys import get_model, load
from models.recsys._synthetic import make_synthetic
from models.recsys.checkpoints import Checkpoints
from models.recsys.data import PostData
from models.recsys.distributed import partition_by_user
from models.recsys.multilabel import MultiLabelConfig, MultiLabelTrainer, dropout_keep, step_of

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def split_with_features(tmp, n_users: int, test_per_user: int) -> jt.SplitData:
    """A written split, features straight from the generator (the store path: test_train_job)."""
    write_archive(tmp, with_store=False, n_users=n_users, test_per_user=test_per_user)
    s = make_synthetic(n_users=n_users, sn_dim=SN_DIM, seed=0, test_per_user=test_per_user)
    data = jt.load_split(tmp / "split")
    for part, src in ((data.train, s.train), (data.val, s.test)):
        for f in ("ic", "sn"):
            part.features[f], part.has[f] = src[f], np.ones(len(src[f]), bool)
    return data


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> jt.SplitData:
    """60 users, ~560 training posts (2 batches of 450 per epoch), 2 held-out posts per user."""
    return split_with_features(tmp_path_factory.mktemp("small"), n_users=60, test_per_user=2)


def _bpr(epochs: int) -> jt.BPRConfig:  # fit() takes the BPR config; the nets read its epochs
    return jt.BPRConfig(epochs=epochs, seed=0)


def _assert_same(a, b, atol: float = 0.0) -> None:
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=atol)


# --------------------------------------------------------------------------- the synchronised step


def test_hashed_steps_and_dropout_masks_do_not_depend_on_the_shard():
    keys = np.arange(10_000)
    steps = step_of(keys, seed=3, epoch=1, n_steps=20)
    sizes = np.bincount(steps, minlength=20)
    assert sizes.min() > 400 and sizes.max() < 600  # ~500 each: a uniform hash
    assert not np.array_equal(steps, step_of(keys, seed=3, epoch=2, n_steps=20))  # reshuffled per epoch
    keep = dropout_keep(keys[:200], width=64, p=0.5, seed=3, epoch=1)
    assert set(np.unique(keep)) == {0.0, 2.0} and abs((keep > 0).mean() - 0.5) < 0.02
    shard = keys[1::3]  # the same post on another worker: the same step and mask
    np.testing.assert_array_equal(step_of(shard, 3, 1, 20), steps[1::3])
    np.testing.assert_array_equal(dropout_keep(shard[:50], 64, 0.5, 3, 1), keep[1::3][:50])


@pytest.mark.parametrize("name", ["social-multilabel", "visual-multilabel"])
def test_two_synced_shards_equal_one_trainer_over_their_union(name):
    rng = np.random.default_rng(0)
    n, n_tags = 40, 12
    posts = PostData.from_lists(rng.integers(0, 8, n), np.arange(n), [rng.choice(n_tags, 3, replace=False)
                                                                       for _ in range(n)], n_tags,
                                {"ic": rng.random((n, 512), dtype=np.float32),
                                 "sn": rng.normal(size=(n, 4)).astype(np.float32)})
    c = MultiLabelConfig(lr=0.05, batch_size=16, seed=1)
    hp = dict(n_tags=n_tags, sn_dim=4, hidden=8, seed=2)
    single = get_model(name, **hp)
    one = MultiLabelTrainer(single, posts, c)
    replicas = [get_model(name, **hp) for _ in range(2)]
    part = rng.integers(0, 2, n)
    sync = ThreadSync(2)
    shards = [MultiLabelTrainer(replicas[r], posts.subset(np.flatnonzero(part == r)), c, n, r, 2,
                                sync.for_rank(r), keys=np.flatnonzero(part == r)) for r in range(2)]
    for epoch in range(2):
        threads = [threading.Thread(target=shards[r].run_epoch, args=(epoch,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        one.run_epoch(epoch)
    for rep in replicas:  # the same global batches and masks: only the float sums' order differs
        _assert_same(single, rep, atol=1e-6)
    _assert_same(replicas[0], replicas[1])  # replicas stay identical
    moved = single.state_dict()["out.weight"] - get_model(name, **hp).state_dict()["out.weight"]
    assert moved.abs().max() > 1e-3  # the steps did something


# --------------------------------------------------------------------------- Ray workers


def test_two_ray_workers_match_one_worker(tmp_path, ray_local):
    # 8 held-out posts per user (1280 validation posts).
    data = split_with_features(tmp_path, n_users=160, test_per_user=8)
    f1, models = {}, {}
    for workers in (0, 2):
        c = cfg(tmp_path / f"w{workers}", num_workers=workers, hidden=64)
        models[workers], hist, _ = jt.fit("social-multilabel", data, c, _bpr(20), SN_DIM, "cpu", ckpt=None)
        f1[workers] = hist[-1]["val_f1@5"]
        print(f"social-multilabel val F1@5, {workers} Ray worker(s) (0: in-process): {f1[workers]:.4f}")
    mp = _most_popular_f1(data)
    print(f"most-popular val F1@5: {mp:.4f}")
    assert f1[0] > mp + 0.2, (f1, mp)  # it learned the planted signal
    assert abs(f1[2] - f1[0]) <= 0.005, f1
    _assert_same(models[0], models[2], atol=1e-5)  # they differ only by float summation order


def _two_threads(name: str, data: jt.SplitData, conf: jt.TrainConfig, epochs: int):
    """Two shards as the Ray engine cuts them, in threads with ThreadSync: the uninterrupted
    two-worker run without Ray (gloo's sum of two tensors is the same a + b)."""
    opts = jt.train_opts(name, data, conf, _bpr(epochs))
    part = partition_by_user(data.train, 2, opts.seed)
    models = [jt.build(name, data, conf, 0, "cpu") for _ in range(2)]
    sync = ThreadSync(2)
    trainers = [MultiLabelTrainer(models[r], data.train.subset(np.flatnonzero(part == r)), opts, len(data.train),
                                  r, 2, sync.for_rank(r), keys=np.flatnonzero(part == r)) for r in range(2)]
    for epoch in range(opts.epochs):
        threads = [threading.Thread(target=trainers[r].run_epoch, args=(epoch,)) for r in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    return models[0]


def test_two_workers_resume_and_restart_bit_for_bit(tmp_path, ray_local):
    """Stopped after epoch 2 and resumed (weights + momentum from the checkpoint), with rank 1
    dying in epoch 3 (restart from the driver's copy): equal to an uninterrupted run."""
    data = split_with_features(tmp_path, n_users=40, test_per_user=1)
    c = dict(num_workers=2, hidden=16, ml_min_steps=0)
    ref = _two_threads("visual-multilabel", data, cfg(tmp_path / "a", **c), 4)
    ckpt = Checkpoints(tmp_path / "b" / "ckpt", "fp", data.tags.tolist())
    jt.fit("visual-multilabel", data, cfg(tmp_path / "b", **c), _bpr(2), 0, "cpu", ckpt)
    assert (ckpt.dir / "epoch-0002" / "optimizer.safetensors").is_file()
    got, hist, _ = jt.fit("visual-multilabel", data, cfg(tmp_path / "b", fail_at="2:1", **c), _bpr(4), 0, "cpu", ckpt)
    assert (ckpt.dir / "fault-fired").exists()
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    _assert_same(ref, got)


# --------------------------------------------------------------------------- checkpoints, in-process


def test_resumed_job_equals_uninterrupted_and_needs_the_momentum(tmp_path, recsys_split):
    recsys_split(tmp_path, n_users=40)  # the real LMDB store: the job reads ic and sn from it
    kw = dict(model="social-multilabel", hidden=16, ml_min_steps=0)
    jt.run(cfg(tmp_path, epochs=2, **kw))  # "killed" after epoch 2
    jt.run(cfg(tmp_path, epochs=4, **kw))  # same settings, more epochs: resumes at epoch 2
    resumed = load(tmp_path / "models" / "social-multilabel")
    assert [h["epoch"] for h in resumed.meta["metrics"]["history"]] == [1, 2, 3, 4]
    runs = {}
    for label, drop_momentum in (("fresh", None), ("no-momentum", True)):
        d = tmp_path / label
        d.mkdir()
        for sub in ("split", "store"):
            (d / sub).symlink_to(tmp_path / sub)
        if drop_momentum:  # a checkpoint of the weights only, no momentum
            jt.run(cfg(d, epochs=2, **kw))
            (d / "checkpoints" / "social-multilabel" / "epoch-0002" / "optimizer.safetensors").unlink()
        jt.run(cfg(d, epochs=4, **kw))
        runs[label] = load(d / "models" / "social-multilabel")
    _assert_same(runs["fresh"], resumed)  # bit for bit
    diff = (runs["no-momentum"].state_dict()["out.weight"] - runs["fresh"].state_dict()["out.weight"]).abs().max()
    assert diff > 1e-4  # without the momentum buffers a resumed run takes other steps


# --------------------------------------------------------------------------- small archives


def test_paper_settings_learn_on_a_small_archive(small, tmp_path, caplog):
    """The job's defaults (SGD lr 0.01, momentum 0.9, dropout 0.5, batch 450, hidden 512, early
    stopping on validation F1@5): social beats most-popular and visual, with per-epoch lines."""
    caplog.set_level(logging.INFO, logger="jobs")
    defaults = jt.TrainConfig(out=str(tmp_path))
    assert (defaults.ml_lr, defaults.ml_momentum, defaults.ml_batch_size, defaults.hidden) == (0.01, 0.9, 450, 512)
    f1 = {}
    for name in ("social-multilabel", "visual-multilabel"):
        _, hist, es = jt.fit(name, small, defaults, _bpr(defaults.epochs), SN_DIM, "cpu", ckpt=None)
        f1[name] = es.best  # the kept epoch's
    # torch's default loss (mean over tags too) at the same lr: each tag's gradient / T
    _, hist, es = jt.fit("social-multilabel", small, jt.TrainConfig(out=str(tmp_path), ml_tag_reduction="mean"),
                         _bpr(defaults.epochs), SN_DIM, "cpu", ckpt=None)
    f1["social-multilabel, tag mean"] = es.best
    mp = _most_popular_f1(small)
    print({**f1, "most-popular": round(mp, 4), "epochs": len(hist)})
    assert es.should_stop() and es.best == max(h["val_f1@5"] for h in hist)  # stopped; the best epoch kept
    assert f1["social-multilabel"] > mp + 0.15, (f1, mp)
    assert f1["social-multilabel"] >= f1["visual-multilabel"] + 0.05, f1  # the user vectors carry the style
    assert f1["social-multilabel"] > f1["social-multilabel, tag mean"] + 0.05, f1  # slow: behind even at the cap
    assert f"train social-multilabel: epoch 1/{defaults.epochs} loss" in caplog.text and "val F1@5" in caplog.text


def test_min_steps_raises_the_epochs_of_a_tiny_archive(tmp_path):
    c = jt.TrainConfig(out=str(tmp_path), ml_min_steps=60, ml_batch_size=450)
    assert jt.ml_config(c, n_posts=300, epochs=30).epochs == 60  # 1 step per epoch
    assert jt.ml_config(c, n_posts=100_000, epochs=30).epochs == 30  # 223 steps per epoch: untouched
    assert jt.ml_config(jt.TrainConfig(out=str(tmp_path), ml_min_steps=0), 300, 5).epochs == 5


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("flag, value, message", [
    ("ml_lr", 0.0, "--ml-lr must be > 0, got 0.0"),
    ("ml_momentum", 1.0, r"--ml-momentum must be in \[0, 1\), got 1.0"),
    ("ml_batch_size", 0, "--ml-batch-size must be >= 1, got 0"),
    ("ml_epochs", -1, r"--ml-epochs must be >= 0 \(0: --epochs\), got -1"),
    ("ml_min_steps", -5, r"--ml-min-steps must be >= 0 \(0: off\), got -5"),
    ("hidden", 0, "--hidden must be >= 1, got 0"),
])
def test_bad_multilabel_flags_are_user_errors(tmp_path, flag, value, message):
    with pytest.raises(JobError, match=message):
        jt.run(cfg(tmp_path, model="social-multilabel", **{flag: value}))


def test_bad_trainer_settings_and_optimizer_state_are_model_errors(small):
    m = get_model("visual-multilabel", n_tags=len(small.tags), hidden=8)
    with pytest.raises(ModelError, match="tag_reduction 'max' is not one of"):
        MultiLabelTrainer(m, small.train, MultiLabelConfig(tag_reduction="max"))
    with pytest.raises(ModelError, match="needs a sync"):
        MultiLabelTrainer(m, small.train, MultiLabelConfig(), world=2)
    tr = MultiLabelTrainer(m, small.train, MultiLabelConfig())
    with pytest.raises(ModelError, match=r"'momentum.out.weight' has shape \(3, 3\), expected"):
        tr.load_optimizer_state({"momentum.out.weight": torch.zeros(3, 3)})
    with pytest.raises(ModelError, match="dropout must be in"):
        get_model("visual-multilabel", n_tags=4, dropout=1.0)


def test_multilabel_flags_parse_and_a_bad_reduction_is_refused(tmp_path):
    from jobs._cli import resolve_config

    c = resolve_config(jt.TrainConfig, ["--out", str(tmp_path), "--num-workers", "2", "--ml-epochs", "5",
                                        "--ml-min-steps", "0", "--ml-momentum", "0.5", "--ml-tag-reduction", "mean"],
                       "train", "")
    assert (c.num_workers, c.ml_epochs, c.ml_min_steps, c.ml_momentum, c.ml_tag_reduction) == (2, 5, 0, 0.5, "mean")
    (tmp_path / "c.yaml").write_text("ml_tag_reduction: max\n")
    with pytest.raises(JobError, match=r"'ml_tag_reduction' must be one of \['sum', 'mean'\], got 'max'"):
        resolve_config(jt.TrainConfig, ["--config", str(tmp_path / "c.yaml")], "train", "")


def test_diverging_net_stops_with_its_own_flags_named(small, tmp_path):
    from models.errors import NumericalError

    with pytest.raises(NumericalError, match=r"visual-multilabel: training diverged .* lr=1e\+30, momentum=0.9, "
                                             r"batch_size=450, tag_reduction=sum.*; lower --ml-lr$"):
        jt.fit("visual-multilabel", small, cfg(tmp_path, ml_lr=1e30, hidden=8), _bpr(3), 0, "cpu", ckpt=None)
