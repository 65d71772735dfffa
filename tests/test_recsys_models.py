"""models.recsys: registry contract, BPR steps against the reference, save/load, planted signal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.errors import ModelError, NumericalError
from models.recsys import get_model, list_models, load, required_features, save
from models.recsys._synthetic import make_synthetic
from models.recsys.bpr import BPRConfig, hardest_of, sample_negatives, train_bpr
from models.recsys.bpr_step import bpr_step_autograd, bpr_step_fused, bpr_step_reference
from models.recsys.data import PostData
from models.recsys.evaluate import evaluate
from models.recsys.factorization import FactorizationModel, average, score_reference
from models.recsys.multilabel import train_multilabel

BASE_NAMES = ["PITF", "FM", "PITF-IC", "PITF-OD", "PITF-IC-OD", "FM-IC", "FM-OD", "FM-IC-OD"]
U, N_ITEMS, T, K, D_SN = 7, 9, 11, 6, 5


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _batch(n=8, seed=0, unseen=True):
    rng = np.random.default_rng(seed)
    user = rng.integers(0, U, n)
    item = rng.integers(0, N_ITEMS, n)
    if unseen:
        user[0], item[1] = -1, -1
    b = {"user_index": user, "item_index": item,
         "ic": rng.random((n, 512)).astype(np.float32), "has_ic": np.ones(n, bool),
         "od": rng.random((n, 80)).astype(np.float32), "has_od": np.ones(n, bool),
         "sn": rng.normal(size=(n, D_SN)).astype(np.float32), "has_sn": np.ones(n, bool)}
    b["has_ic"][2] = b["has_od"][3] = b["has_sn"][4] = False  # missing features: zero vector fallback
    return b


def _build(name, seed=0):
    if name.endswith("multilabel"):
        return get_model(name, n_tags=T, sn_dim=D_SN, hidden=8, seed=seed, n_users=U, n_items=N_ITEMS)
    return get_model(name, n_users=U, n_items=N_ITEMS, n_tags=T, dim=K, sn_dim=D_SN, seed=seed)


def test_registry_names_and_unknown_name():
    names = list_models()
    assert names[:8] == BASE_NAMES
    assert set(names) == set(BASE_NAMES) | {n + "+SN" for n in BASE_NAMES} | {"social-multilabel", "visual-multilabel"}
    with pytest.raises(ModelError, match="unknown model 'PITF-XYZ'; valid: PITF, FM, PITF-IC"):
        get_model("PITF-XYZ")
    with pytest.raises(ModelError, match="bad hyperparameters"):
        get_model("PITF", n_users=2, n_items=2, n_tags=2, dimm=3)
    assert required_features("PITF-IC-OD+SN") == ("ic", "od", "sn") and required_features("FM") == ()


@pytest.mark.parametrize("name", list_models())
def test_contract_scores_are_an_inner_product(name):
    m = _build(name)
    b = _batch()
    tm, pv = m.tag_matrix(), m.post_vectors(b)
    assert tm.dtype == np.float32 and pv.dtype == np.float32
    assert tm.shape[0] == T and pv.shape == (8, tm.shape[1])
    assert np.isfinite(pv).all()
    if isinstance(m, FactorizationModel):  # against the papers' formulas, written out
        inp = m.inputs(b)
        want = np.array([[float(score_reference(m, inp, n, t)) for t in range(T)] for n in range(8)])
        np.testing.assert_allclose(pv @ tm.T, want, rtol=1e-5, atol=1e-5)
        if m.spec.family == "PITF" and not m.spec.social:  # unseen user: a zero user block
            assert not pv[0, :K].any()
    else:
        with torch.no_grad():
            m.net.eval()
            inp = m.inputs(b)
            logits = m.net.out(m.net.hidden(inp["ic"], inp.get("sn"))).numpy()
        np.testing.assert_allclose(pv @ tm.T, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in list_models() if not n.endswith("multilabel")])
def test_average_of_replicas_scores_their_mean(name, tmp_path):
    reps = [_build(name, seed=s) for s in (0, 1, 2)]
    b = _batch()
    for r in reps:
        r.params = {k: v + 0.05 for k, v in r.params.items()}  # non-zero biases and +SN user rows too
        r.fit_centre(b)  # one split: the same centres (a no-op without features)
    mean = average(reps)
    assert mean.dim == 3 * K and mean.name == name and mean.seed == 0
    want = np.mean([r.post_vectors(b) @ r.tag_matrix().T for r in reps], 0)
    np.testing.assert_allclose(mean.post_vectors(b) @ mean.tag_matrix().T, want, rtol=1e-5, atol=1e-6)
    inp = mean.inputs(b)  # the papers' formula on the merged weights: the same scores
    np.testing.assert_allclose([float(score_reference(mean, inp, 5, t)) for t in range(T)], want[5],
                               rtol=1e-5, atol=1e-6)
    save(mean, tmp_path / "m", {"tags": [f"t{i}" for i in range(T)]})  # a plain model of dim 3k: saved, loaded
    np.testing.assert_allclose(load(tmp_path / "m").post_vectors(b) @ load(tmp_path / "m").tag_matrix().T, want,
                               rtol=1e-5, atol=1e-6)
    assert average(reps[:1]).post_vectors(b).tobytes() == reps[0].post_vectors(b).tobytes()


def test_average_refuses_models_that_differ_beyond_their_weights():
    with pytest.raises(ModelError, match="no models"):
        average([])
    with pytest.raises(ModelError, match="differs from PITF"):
        average([_build("PITF"), get_model("PITF", n_users=U + 1, n_items=N_ITEMS, n_tags=T, dim=K)])
    with pytest.raises(ModelError, match="differs from PITF"):
        average([_build("PITF"), _build("FM")])
    a, b = _build("PITF-IC"), _build("PITF-IC", seed=1)
    a.fit_centre(_batch())
    with pytest.raises(ModelError, match="ic feature centres differ"):
        average([a, b])


@pytest.mark.parametrize("name", list_models())
def test_save_load_roundtrip_without_pickle(name, tmp_path):
    m = _build(name, seed=3)
    tags = [f"t{i}" for i in range(T)]
    save(m, tmp_path / name, {"tags": tags, "user_ids": np.arange(U) * 10, "views": {"ic": "image/vgg16@1"},
                              "metrics": {"val": {"f1@5": 0.5}}})
    back = load(tmp_path / name)
    b = _batch()
    np.testing.assert_array_equal(back.post_vectors(b) @ back.tag_matrix().T, m.post_vectors(b) @ m.tag_matrix().T)
    assert back.tags == tags and back.user_ids.tolist() == list(range(0, 10 * U, 10))
    assert back.meta["kind"] == m.kind and back.meta["metrics"]["val"]["f1@5"] == 0.5
    assert sorted(p.name for p in (tmp_path / name).iterdir()) == ["model.json", "weights.safetensors"]


def test_load_refuses_pickle_and_damage(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    torch.save({"user": torch.zeros(2, 2)}, d / "weights.pt")
    with pytest.raises(ModelError, match="refusing to load weights.pt: pickle-based"):
        load(d)
    m = _build("FM")
    save(m, tmp_path / "ok", {"tags": [str(i) for i in range(T)]})
    meta = json.loads((tmp_path / "ok" / "model.json").read_text())
    (tmp_path / "ok" / "model.json").write_text(json.dumps({**meta, "weights": "weights.pt"}))
    with pytest.raises(ModelError, match="not a .safetensors file"):
        load(tmp_path / "ok")
    save(m, tmp_path / "ok", {"tags": [str(i) for i in range(T)]})
    with open(tmp_path / "ok" / "weights.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(ModelError, match="digest differs"):
        load(tmp_path / "ok")
    with pytest.raises(ModelError, match="does not exist"):
        load(tmp_path / "nope")
    with pytest.raises(ModelError, match="meta\\['tags'\\] has 2 tags"):
        save(m, tmp_path / "bad", {"tags": ["a", "b"]})


def test_bad_batches_name_the_key():
    m = _build("PITF-IC")
    b = _batch()
    del b["ic"]
    with pytest.raises(ModelError, match="needs batch key 'ic'"):
        m.post_vectors(b)
    b = _batch()
    b["ic"] = b["ic"][:, :100]
    with pytest.raises(ModelError, match=r"batch\['ic'\] has shape \(8, 100\), expected \(8, 512\)"):
        m.post_vectors(b)
    with pytest.raises(ModelError, match="needs the user vector dim"):
        get_model("FM+SN", n_users=2, n_items=2, n_tags=2, dim=2)


@pytest.mark.parametrize("name", ["PITF", "FM", "PITF-IC-OD+SN", "FM-IC-OD+SN", "PITF-OD", "FM-IC"])
@pytest.mark.parametrize("seed,cap", [(0, 32), (1, 32), (0, 2)])  # cap 2: the crowded-row rule fires
def test_fused_and_autograd_steps_match_the_reference(name, seed, cap):
    rng = np.random.default_rng(seed)
    b = _batch(n=12, seed=seed)
    b["user_index"][5] = b["user_index"][6]  # a repeated user row must get both updates
    pos = torch.as_tensor(rng.integers(0, T, 12))
    neg = torch.as_tensor((pos.numpy() + rng.integers(1, T, 12)) % T)
    models = [_build(name, seed=seed) for _ in range(3)]
    for m in models:
        m.params = {k: v + 0.3 * torch.randn_like(v) for k, v in m.params.items()}  # nonzero bias too
        m.params = {k: v.clone() for k, v in models[0].params.items()}
    inp = models[0].inputs(b)
    loss_ref = bpr_step_reference(models[0], inp, pos, neg, lr=0.1, reg=0.01, cap=cap)
    loss_fused = bpr_step_fused(models[1], inp, pos, neg, lr=0.1, reg=0.01, cap=cap)
    loss_auto = bpr_step_autograd(models[2], inp, pos, neg, lr=0.1, reg=0.01, cap=cap)
    assert float(loss_fused) == pytest.approx(float(loss_auto), rel=1e-5)
    assert float(loss_fused) <= loss_ref  # the reference's total includes the L2 term
    for k in models[0].params:
        torch.testing.assert_close(models[1].params[k], models[0].params[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(models[2].params[k], models[0].params[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["PITF", "FM", "PITF-IC-OD+SN", "FM-OD"])
def test_hardest_negative_is_the_highest_scored_candidate(name):
    m = _build(name, seed=2)
    m.params = {k: v + 0.3 * torch.randn_like(v) for k, v in m.params.items()}  # nonzero bias too
    b = _batch(n=6, seed=2)
    inp = m.inputs(b)
    rows = torch.as_tensor([0, 3, 3, 5, 1, 2, 4, 0])           # samples of the batch's posts, repeats too
    cands = torch.as_tensor(np.random.default_rng(2).integers(0, T, (4, 8)))
    got = hardest_of(m, m.block_vectors(inp), rows, cands)
    for j in range(8):
        ref = [float(score_reference(m, inp, int(rows[j]), int(t))) for t in cands[:, j]]
        assert int(got[j]) == int(cands[int(np.argmax(ref)), j])


def test_negatives_are_never_positive():
    rng = np.random.default_rng(0)
    tags = [rng.choice(5, size=rng.integers(1, 5), replace=False) for _ in range(50)]
    d = PostData.from_lists(np.zeros(50), np.zeros(50), tags, n_tags=5)
    post, _ = d.pairs()
    codes = np.sort(np.repeat(np.arange(50), np.diff(d.indptr)) * 5 + d.indices)
    neg = sample_negatives(post, codes, 5, rng)
    for p, t in zip(post, neg):
        assert t not in tags[p]


def test_nan_loss_names_the_hyperparameters():
    s = make_synthetic(n_users=20, seed=1)
    d = _data(s.train, s.n_tags)
    m = get_model("PITF-IC", n_users=s.n_users, n_items=len(d), n_tags=s.n_tags, dim=8)
    with pytest.raises(NumericalError, match=r"PITF-IC: training diverged .* lr=1e\+30, reg=0.0001"):
        train_bpr(m, d, BPRConfig(lr=1e30, reg=1e-4, batch_size=64, epochs=3))


# --------------------------------------------------------------------------- planted signal


def _data(part, n_tags, feats=("ic", "od", "sn")):
    return PostData.from_lists(part["user_index"], part["item_index"], part["tags"], n_tags,
                               {f: part[f] for f in feats})


@pytest.fixture(scope="module")
def synth():
    s = make_synthetic(n_users=160, sn_dim=16, seed=0)
    return s, _data(s.train, s.n_tags), _data(s.test, s.n_tags)


def _fit(name, synth, epochs=25, negatives=1):
    s, tr, te = synth
    m = get_model(name, n_users=s.n_users, n_items=len(tr), n_tags=s.n_tags, dim=16, sn_dim=16, seed=0)
    train_bpr(m, tr, BPRConfig(lr=0.05, reg=1e-4, batch_size=128, epochs=epochs, seed=0, negatives=negatives))
    return m


def test_torch_step_with_hard_negatives_learns_the_planted_signal(synth):
    _, _, te = synth
    uniform = evaluate(_fit("PITF-IC-OD", synth), te)["f1@5"]
    hard = evaluate(_fit("PITF-IC-OD", synth, negatives=4), te)["f1@5"]
    plain = evaluate(_fit("PITF", synth, negatives=4), te)["f1@5"]
    assert hard > plain + 0.1 and hard > uniform - 0.03, (hard, uniform, plain)


def test_content_models_beat_pitf_and_fm(synth):
    _, _, te = synth
    f1 = {n: evaluate(_fit(n, synth), te)["f1@5"] for n in BASE_NAMES}
    for content in BASE_NAMES[2:]:
        assert f1[content] > max(f1["PITF"], f1["FM"]) + 0.1, f1
    assert f1["PITF-IC-OD"] > max(f1["PITF-IC"], f1["PITF-OD"]), f1


@pytest.mark.parametrize("base", ["PITF-IC-OD", "FM-IC-OD"])
def test_social_term_helps_users_with_few_posts(synth, base):
    s, _, te = synth
    cold = te.subset(np.flatnonzero(s.n_train_posts_per_user[te.user_index] <= 2))
    assert len(cold) >= 30
    f_base = evaluate(_fit(base, synth), cold, ks=(3,))["f1@3"]
    f_sn = evaluate(_fit(base + "+SN", synth), cold, ks=(3,))["f1@3"]
    assert f_sn > f_base + 0.03, (f_base, f_sn)


def test_social_multilabel_beats_visual_only(synth):
    s, tr, te = synth
    f1 = {}
    for name in ("visual-multilabel", "social-multilabel"):
        m = get_model(name, n_tags=s.n_tags, sn_dim=16, hidden=64, seed=0)
        # The paper's settings (lr 0.01, batch 450) with the per-post loss (summed over tags)
        losses = train_multilabel(m, tr, epochs=60, batch_size=450)
        assert losses[-1] < losses[0]
        f1[name] = evaluate(m, te)["f1@5"]
    assert f1["visual-multilabel"] > 0.2, f1  # the image alone finds the topic
    assert f1["social-multilabel"] > f1["visual-multilabel"] + 0.05, f1


@pytest.mark.parametrize("name", ["PITF", "PITF-IC-OD+SN", "FM-IC-OD"])
@pytest.mark.parametrize("cap", [32, 3])
def test_fused_step_on_distinct_posts_equals_per_sample(name, cap):
    rng = np.random.default_rng(5)
    b = _batch(n=6, seed=5)
    rows = torch.as_tensor(rng.integers(0, 6, 20))  # 20 samples over 6 posts, repeats included
    pos = torch.as_tensor(rng.integers(0, T, 20))
    neg = (pos + torch.as_tensor(rng.integers(1, T, 20))) % T
    a, c = _build(name, seed=2), _build(name, seed=2)
    per_post = a.inputs(b)
    per_sample = {k: v.index_select(0, rows) for k, v in per_post.items()}
    la = bpr_step_fused(a, per_post, pos, neg, lr=0.1, reg=0.01, rows=rows, cap=cap)
    lc = bpr_step_fused(c, per_sample, pos, neg, lr=0.1, reg=0.01, cap=cap)
    assert float(la) == pytest.approx(float(lc), rel=1e-6)
    for k in a.params:
        torch.testing.assert_close(a.params[k], c.params[k], rtol=1e-5, atol=1e-6)


def test_saving_the_same_weights_twice_gives_the_same_digest(tmp_path):
    import json

    from models.recsys import get_model, save

    for run in range(2):
        torch.manual_seed(0)
        m = get_model("PITF", n_users=3, n_items=4, n_tags=5, dim=4)
        save(m, tmp_path / f"m{run}", {"tags": [f"t{i}" for i in range(5)]})
    digests = [json.loads((tmp_path / f"m{r}" / "model.json").read_text())["weights_sha256"] for r in range(2)]
    assert digests[0] == digests[1]


def test_feature_centre_is_fitted_saved_and_applied(tmp_path):
    """Centred features: unit rows minus the training mean unit row, unit again; missing rows
    stay zero; the centre travels with the weights; weights saved without one load uncentred."""
    m = _build("PITF-IC-OD+SN", seed=1)
    b = _batch()
    before = m.post_vectors(b)
    m.fit_centre(b)
    unit = b["ic"] / np.linalg.norm(b["ic"], axis=1, keepdims=True)
    want_centre = unit[b["has_ic"]].mean(0)
    np.testing.assert_allclose(m.centres["ic"].numpy(), want_centre, rtol=1e-5, atol=1e-6)
    inp = m.inputs(b)
    want = unit - want_centre
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    want[~b["has_ic"]] = 0.0
    np.testing.assert_allclose(inp["ic"].numpy(), want, rtol=1e-4, atol=1e-6)
    assert not np.allclose(m.post_vectors(b), before)
    save(m, tmp_path / "m", {"tags": [f"t{i}" for i in range(T)]})
    back = load(tmp_path / "m")
    np.testing.assert_array_equal(back.post_vectors(b), m.post_vectors(b))
    old = {k: v for k, v in m.state_dict().items() if not k.startswith("centre_")}  # a pre-centring model
    fresh = _build("PITF-IC-OD+SN", seed=1)
    fresh.load_state_dict(old)
    assert not fresh.centres["ic"].any()
    bad = {**m.state_dict(), "centre_od": torch.zeros(3)}
    with pytest.raises(ModelError, match=r"'centre_od' has shape \(3,\), expected \(80,\)"):
        fresh.load_state_dict(bad)
