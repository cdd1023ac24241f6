"""cellio.create_loader: batches, labels, sharding across simulated ranks, set_epoch, resume, TTA, filters, errors.

Runs on the torch backend (fast) and, where the behaviour lives in the backend, on DALI's CPU mode too.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cellio
from cellio.errors import PipelineConfigError
from cellio.schema import CELL_TYPES

BACKENDS = ["torch", pytest.param("dali", marks=pytest.mark.skipif(
    not __import__("cellio").dali_available(), reason="needs nvidia-dali"))]


def _make(store, bs=5, **kw):
    kw.setdefault("crop_size", 7)
    kw.setdefault("num_workers", 0)
    kw.setdefault("device", "cpu")
    kw.setdefault("backend", "torch")
    kw.setdefault("rank", 0)
    kw.setdefault("world_size", 1)
    return cellio.create_loader(store, bs, **kw)


def _cat(batches, key):
    return torch.cat([b[key] for b in batches]) if batches else torch.empty(0, dtype=torch.int64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_epoch_over_three_ranks_yields_every_site_once_with_right_labels(tiny_store, backend):
    train_rows = np.flatnonzero((tiny_store.sites["dataset"] == "train").to_numpy())
    seen = []
    for rank in range(3):
        loader = _make(tiny_store, 7, rank=rank, world_size=3, last_batch="partial", backend=backend, seed=1)
        loader.set_epoch(2)
        batches = list(loader)
        assert len(batches) == len(loader)
        for b in batches:
            assert b["image"].dtype == torch.float32 and b["image"].shape[1:] == (6, 7, 7)
            assert {"image", "label", "cell_type", "index", "view", "site", "plate"} <= set(b)
            rows = tiny_store.sites.iloc[b["index"].numpy()]
            assert b["label"].tolist() == rows["sirna"].fillna(-1).astype(int).tolist()
            assert [CELL_TYPES[c] for c in b["cell_type"].tolist()] == rows["cell_type"].tolist()
            assert b["site"].tolist() == rows["site"].tolist() and b["plate"].tolist() == rows["plate"].tolist()
            assert (b["view"] == 0).all()
        seen.append(_cat(batches, "index").numpy())
    allseen = np.concatenate(seen)
    assert sorted(allseen.tolist()) == train_rows.tolist()  # 160 sites over 3 ranks: uneven tails, exactly once


def test_pixels_do_not_depend_on_rank_count_or_batch_size(tiny_store):
    """A site's crop and flips come from its global position in the epoch: 1 rank x B=8 == 3 ranks x B=5."""
    def images(world, bs):
        got = {}
        for rank in range(world):
            for b in _make(tiny_store, bs, rank=rank, world_size=world, last_batch="partial", seed=9):
                got.update({i: img for i, img in zip(b["index"].tolist(), b["image"])})
        return got

    one, three = images(1, 8), images(3, 5)
    assert one.keys() == three.keys() and len(one) == 160
    assert all(torch.equal(one[i], three[i]) for i in one)


def test_drop_policy_equal_batches_per_rank(tiny_store):
    lens = [len(_make(tiny_store, 7, rank=r, world_size=3)) for r in range(3)]  # train default: drop
    assert lens == [160 // 21] * 3
    batches = list(_make(tiny_store, 7, rank=1, world_size=3))
    assert all(len(b["index"]) == 7 for b in batches)


def test_determinism_and_set_epoch(tiny_store):
    a = [b["image"] for b in _make(tiny_store, seed=3)]
    b = [b["image"] for b in _make(tiny_store, seed=3)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    loader = _make(tiny_store, seed=3)
    loader.set_epoch(1)
    c = [b["image"] for b in loader]
    assert not all(torch.equal(x, y) for x, y in zip(a, c))  # another epoch: another order and other draws
    assert loader.epoch == 2  # a finished epoch moves on to the next one


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_mid_epoch_reproduces_the_rest(tiny_store, backend):
    full = _make(tiny_store, 6, backend=backend, seed=5)
    full.set_epoch(3)
    reference = list(full)
    loader = _make(tiny_store, 6, backend=backend, seed=5)
    loader.set_epoch(3)
    it = iter(loader)
    head = [next(it) for _ in range(4)]
    state = loader.state_dict()
    assert state["epoch"] == 3 and state["batch"] == 4
    del it
    fresh = _make(tiny_store, 6, backend=backend, seed=5)
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert len(head) + len(rest) == len(reference)
    for x, y in zip(head + rest, reference):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["image"], y["image"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_consecutive_epochs_equal_fresh_loaders(tiny_store, backend):
    """Epoch 1 reached by iterating on (DALI reuses its pipeline) equals a fresh loader set to epoch 1."""
    loader = _make(tiny_store, 8, backend=backend, seed=4, indices=np.arange(40))
    first, second = list(loader), list(loader)
    fresh = _make(tiny_store, 8, backend=backend, seed=4, indices=np.arange(40))
    fresh.set_epoch(1)
    again = list(fresh)
    assert len(second) == len(again) == 5
    assert not torch.equal(first[0]["index"], second[0]["index"])
    for x, y in zip(second, again):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["image"], y["image"])
    loader.set_epoch(0)  # a jump back rebuilds the pipeline and replays epoch 0
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(first, loader))


def test_a_new_iteration_restarts_the_epoch(tiny_store):
    loader = _make(tiny_store, 6, seed=5)
    it = iter(loader)
    first = next(it)
    next(it)
    assert loader.state_dict()["batch"] == 2
    del it
    again = list(loader)  # like a DataLoader: iter() starts over unless load_state_dict asked for a resume
    assert len(again) == len(loader) and torch.equal(again[0]["image"], first["image"])


def test_resume_state_must_match_the_loader(tiny_store):
    state = _make(tiny_store, 6, seed=5).state_dict()
    with pytest.raises(PipelineConfigError, match="sampler"):
        _make(tiny_store, 6, seed=6).load_state_dict(state)


def test_backends_agree(tiny_store):
    if not __import__("cellio").dali_available():
        pytest.skip("needs nvidia-dali")
    a = list(_make(tiny_store, 8, backend="torch", augment="d4_rrc_jitter", indices=np.arange(40)))
    b = list(_make(tiny_store, 8, backend="dali", augment="d4_rrc_jitter", indices=np.arange(40)))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert torch.equal(x["index"], y["index"])
        assert (x["image"] - y["image"]).abs().max() < 0.35  # interpolated resized crops: <= 1 grey level / std


@pytest.mark.parametrize("backend", BACKENDS)
def test_tta_views_every_site_view_once_across_ranks(tiny_store, backend):
    pairs = []
    for rank in range(3):
        loader = _make(tiny_store, 16, train=False, tta="grid9", dihedral=True, rank=rank, world_size=3,
                       datasets=("test",), indices=np.arange(160, 166), backend=backend)
        batches = list(loader)
        pairs += list(zip(_cat(batches, "index").tolist(), _cat(batches, "view").tolist()))
    assert len(pairs) == len(set(pairs)) == 6 * 72
    assert {i for i, _ in pairs} == set(range(160, 166))
    assert {v for _, v in pairs} == set(range(72))


def test_eval_is_unshuffled_and_center_view(tiny_store):
    batches = list(_make(tiny_store, 16, train=False, datasets=("test",)))
    idx = _cat(batches, "index").numpy()
    assert np.array_equal(idx, np.sort(idx)) and len(idx) == 160
    assert set(_cat(batches, "view").tolist()) == {32}  # grid cell 4 (centre), D4 view 0
    assert set(_cat(batches, "label").tolist()) <= set(range(-1, 1139))
    full = list(_make(tiny_store, 16, train=False, tta="full", indices=[0, 1]))
    assert full[0]["image"].shape == (2, 6, 17, 11)


def test_filters(tiny_store):
    sites = tiny_store.sites
    loader = _make(tiny_store, 4, cell_types=["HUVEC"], controls=False, last_batch="partial")
    sel = loader.sites
    assert len(sel) == int(((sites.dataset == "train") & (sites.cell_type == "HUVEC")
                            & (sites.well_type == "treatment")).sum())
    assert set(sel["cell_type"]) == {"HUVEC"} and set(sel["well_type"]) == {"treatment"}
    only = _make(tiny_store, 4, controls="only", datasets=("train", "test"), last_batch="partial")
    assert set(only.sites["well_type"]) <= {"positive_control", "negative_control"}
    exp = sites["experiment"].iloc[0]
    assert set(_make(tiny_store, 4, experiments=[exp], last_batch="partial").sites["experiment"]) == {exp}
    labels = _cat(list(_make(tiny_store, 8, datasets=("test",), controls=False, last_batch="partial")), "label")
    assert (labels == -1).all()  # test treatments have no label


def test_balanced_sampler_oversamples_rare_classes(tiny_store):
    loader = _make(tiny_store, 8, balance="class", last_batch="partial")
    labels = loader.sites["sirna"].to_numpy(dtype=np.int64)
    counts = np.bincount(np.unique(labels, return_inverse=True)[1])
    k = len(counts)
    top = int(np.argmax(counts))
    natural_share = counts.max() / counts.sum()
    draws = np.concatenate([loader.sampler.global_order(e) for e in range(20)])
    drawn = np.bincount(np.unique(labels, return_inverse=True)[1][draws], minlength=k)
    assert natural_share > 1.5 / k  # the tiny set is imbalanced (controls vs treatments) ...
    assert abs(drawn[top] / drawn.sum() - 1 / k) < 0.5 / k  # ... balancing brings every class near 1/k
    assert (drawn > 0).all()
    batch_labels = _cat(list(loader), "label").numpy()
    assert len(batch_labels) == len(loader.sites)


@pytest.mark.parametrize("kwargs,field", [
    (dict(crop_size=18), "crop_size"), (dict(augment="spin"), "preset"), (dict(world_size=0), "world_size"),
    (dict(rank=3, world_size=3), "rank"), (dict(cell_types=["HUVEC"], experiments=["RPE-01"]), "leave no site"),
    (dict(backend="jax"), "backend"), (dict(last_batch="keep"), "last_batch"), (dict(tta="grid9"), "tta"),
    (dict(balance="well"), "balance"), (dict(crop_size=9, augment="rotate_any"), "margin"),
    (dict(cell_types=["HELA"]), "cell_types"),
])
def test_bad_configuration_fails_before_work(tiny_store, kwargs, field):
    with pytest.raises(PipelineConfigError, match=field):
        _make(tiny_store, 4, **kwargs)
    with pytest.raises(PipelineConfigError, match="batch_size"):
        _make(tiny_store, 0)


def test_rank_and_world_size_from_torchrun_env(tiny_store, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    loader = cellio.create_loader(tiny_store, 4, crop_size=7, backend="torch", num_workers=0, device="cpu")
    assert (loader.sampler.rank, loader.sampler.world_size) == (1, 2)


def test_store_path_and_bfloat16(tiny_store):
    loader = _make(tiny_store.path, 4, dtype="bfloat16", indices=np.arange(8), last_batch="partial")
    b = next(iter(loader))
    assert b["image"].dtype == torch.bfloat16 and b["image"].shape == (4, 6, 7, 7)


def test_torch_backend_with_worker_processes(tiny_store):
    kw = dict(indices=np.arange(20), last_batch="partial", seed=2)
    a = list(_make(tiny_store, 6, **kw))
    b = list(_make(tiny_store, 6, num_workers=2, **kw))
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(a, b)) and len(a) == len(b) == 4


# --- a store ingested from an RxRx1-layout set written here by hand (not by cellio.synth) -------------------------
_HAND_WELLS = [  # (dataset, experiment, plate, well, sirna or None, well_type)
    ("train", "HUVEC-01", 1, "B02", 1138, "negative_control"), ("train", "HUVEC-01", 1, "B03", 5, "treatment"),
    ("train", "HUVEC-01", 1, "B04", 7, "treatment"), ("train", "HUVEC-01", 1, "C05", 1108, "positive_control"),
    ("train", "HUVEC-01", 2, "B02", 1138, "negative_control"), ("train", "HUVEC-01", 2, "D11", 9, "treatment"),
    ("test", "RPE-08", 1, "B02", 1138, "negative_control"), ("test", "RPE-08", 1, "B03", None, "treatment"),
    ("test", "RPE-08", 3, "O23", None, "treatment"),
]
HAND_HW = (240, 232)


@pytest.fixture(scope="module")
def hand_store(tmp_path_factory):
    import pandas as pd
    from PIL import Image

    raw = tmp_path_factory.mktemp("hand") / "rxrx1"
    rng = np.random.default_rng(11)
    rows: dict[str, list[dict]] = {"train.csv": [], "test.csv": [], "train_controls.csv": [], "test_controls.csv": []}
    for ds, exp, plate, well, sirna, wtype in _HAND_WELLS:
        rec = {"id_code": f"{exp}_{plate}_{well}", "experiment": exp, "plate": plate, "well": well}
        if wtype == "treatment":
            rows[f"{ds}.csv"].append({**rec, **({"sirna": sirna} if ds == "train" else {})})
        else:
            rows[f"{ds}_controls.csv"].append({**rec, "sirna": sirna, "well_type": wtype})
        for site in (1, 2):
            for ch in range(1, 7):
                path = raw / ds / exp / f"Plate{plate}" / f"{well}_s{site}_w{ch}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(rng.integers(0, 80, size=HAND_HW, dtype=np.uint8), mode="L").save(path)
    cols = {"train.csv": ["id_code", "experiment", "plate", "well", "sirna"],
            "test.csv": ["id_code", "experiment", "plate", "well"],
            "train_controls.csv": ["id_code", "experiment", "plate", "well", "sirna", "well_type"],
            "test_controls.csv": ["id_code", "experiment", "plate", "well", "sirna", "well_type"]}
    for name, recs in rows.items():
        pd.DataFrame(recs, columns=cols[name]).to_csv(raw / name, index=False)
    out = raw.parent / "hand.zarr"
    cellio.ingest(raw, out, codec="none", workers=1, progress=False)
    return cellio.open_store(out)


@pytest.mark.parametrize("backend", BACKENDS)
def test_hand_made_rxrx1_store_three_ranks_224(hand_store, backend):
    truth = {(e, p, w): (-1 if s is None else s) for _, e, p, w, s, _ in _HAND_WELLS}
    assert len(hand_store) == 2 * len(_HAND_WELLS) and hand_store.image_shape == (*HAND_HW, 6)
    kw = dict(datasets=("train", "test"), last_batch="partial", backend=backend, seed=3, crop_size=224)
    epoch0: list[dict] = []
    for rank in range(3):
        loader = _make(hand_store, 4, rank=rank, world_size=3, **kw)
        loader.set_epoch(0)
        for b in loader:
            assert b["image"].shape == (len(b["index"]), 6, 224, 224) and b["image"].dtype == torch.float32
            assert torch.isfinite(b["image"]).all()
            epoch0.append(b)
    index = _cat(epoch0, "index").tolist()
    assert sorted(index) == list(range(len(hand_store)))  # every site exactly once over the 3 ranks
    sites = hand_store.sites
    for i, label in zip(index, _cat(epoch0, "label").tolist()):
        row = sites.iloc[i]
        assert label == truth[(row["experiment"], int(row["plate"]), row["well"])]
    # set_epoch reshuffles; a resumed rank reproduces the rest of its epoch
    loader = _make(hand_store, 4, rank=1, world_size=3, **kw)
    loader.set_epoch(1)
    full = list(loader)
    rank1_epoch0 = _make(hand_store, 4, rank=1, world_size=3, **kw)
    assert _cat(full, "index").tolist() != _cat(list(rank1_epoch0), "index").tolist()
    loader.set_epoch(1)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    del it
    again = _make(hand_store, 4, rank=1, world_size=3, **kw)
    again.load_state_dict(state)
    rest = list(again)
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(full[1:], rest)) and len(rest) == len(full) - 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_plate_pure_batches_cover_every_site_once_over_three_ranks(tiny_store, backend):
    train = tiny_store.sites[tiny_store.sites["dataset"] == "train"]
    seen = []
    for rank in range(3):
        loader = _make(tiny_store, 6, rank=rank, world_size=3, last_batch="partial", backend=backend, seed=4,
                       batch_by="plate")
        loader.set_epoch(1)
        batches = list(loader)
        assert len(batches) == len(loader)
        for b in batches:
            rows = tiny_store.sites.iloc[b["index"].numpy()]
            assert rows.groupby(["experiment", "plate"]).ngroups == 1  # one plate per batch
        seen.append(_cat(batches, "index").numpy())
    assert sorted(np.concatenate(seen).tolist()) == train.index.tolist()


def test_labels_override_and_a_fixed_epoch_length(tiny_store):
    sites = tiny_store.sites
    test_rows = np.flatnonzero((sites["dataset"] == "test").to_numpy())[:6]
    train_rows = np.flatnonzero((sites["dataset"] == "train").to_numpy())[:30]
    pseudo = {int(r): 3 for r in test_rows}
    loader = _make(tiny_store, 4, datasets=None, indices=np.concatenate([train_rows, test_rows]), labels=pseudo,
                   samples_per_epoch=len(train_rows), last_batch="drop")
    assert len(loader) == len(train_rows) // 4
    got = {}
    for b in loader:
        got.update(zip(b["index"].tolist(), b["label"].tolist()))
    for r, lab in got.items():
        assert lab == (3 if r in pseudo else int(sites["sirna"].iloc[r]))
    with pytest.raises(PipelineConfigError, match="labels"):
        _make(tiny_store, 4, labels={int(test_rows[0]): 1})  # a test row outside datasets=("train",)
    with pytest.raises(PipelineConfigError, match="samples_per_epoch"):
        _make(tiny_store, 4, train=False, samples_per_epoch=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_cuda_device_that_is_not_there_is_a_named_error_up_front(tiny_store, backend):
    # torch said "Found no NVIDIA driver on your system" at the first batch, DALI an assert about device_id
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = "cuda" if n == 0 else f"cuda:{n}"
    with pytest.raises(PipelineConfigError, match=rf"device: {device!r} asked for, but .*CUDA device.*'cpu'"):
        _make(tiny_store, device=device, backend=backend)


def test_per_plate_normalisation_removes_a_plate_gain(tmp_path):
    """A plate imaged with other channel gains (the batch effect issue 20's hidden set had) looks the same after
    per-plate normalisation: plate 2 of one experiment is rewritten, well by well, as plate 1's pixels times a gain
    per channel (so its statistics are plate 1's times the gain)."""
    from PIL import Image

    from cellio.testing import make_raw, make_store

    raw = make_raw(tmp_path / "raw", classes=16, size=(19, 13), seed=3, missing_wells=0.0, pixel_stats=False)
    gain = np.array([1.6, 0.7, 1.3, 0.5, 2.0, 1.1])
    exp = "HEPG2-01"
    plate1, plate2 = (sorted((raw / "train" / exp / f"Plate{p}").glob("*.png")) for p in (1, 2))
    assert len(plate1) == len(plate2)  # same wells per plate: the rewritten plate 2 is plate 1 under a gain
    for src, dst in zip(plate1, plate2):
        assert src.name.rsplit("_", 2)[1:] == dst.name.rsplit("_", 2)[1:]  # same site and channel
        c = int(dst.stem.rsplit("_w", 1)[1]) - 1
        x = np.asarray(Image.open(src), np.float64)
        Image.fromarray(np.clip(np.rint(x * gain[c]), 0, 255).astype(np.uint8)).save(dst)
    store = make_store(tmp_path / "s.zarr", raw)
    sites = store.sites
    rows = [sites.index[(sites["experiment"] == exp) & (sites["plate"] == p)].to_numpy() for p in (1, 2)]

    def images(normalize: str) -> dict[int, torch.Tensor]:
        loader = cellio.create_loader(store, 64, train=False, augment="eval", crop_size=11, normalize=normalize,
                                      backend="torch", device="cpu", num_workers=0, indices=np.concatenate(rows),
                                      datasets=None, controls=True, rank=0, world_size=1)
        return {int(i): img for b in loader for i, img in zip(b["index"], b["image"])}

    for normalize, close in (("plate", True), ("global", False)):
        out = images(normalize)
        diff = max(float((out[a] - out[b]).abs().max()) for a, b in zip(*rows))
        assert (diff < 0.3) == close, (normalize, diff)
