"""trainer.infer.logits: per-view logits streamed to disk and read in row blocks; the chain's functions on them."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import trainer.infer.logits
from trainer.infer import aggregate as agg
from trainer.infer.logits import LogitsFile, LogitsWriter, iter_rows
from trainer.infer.stacker import build_features


def _write(path, logits, dtype=np.float32, block=5):
    with LogitsWriter(path, logits.shape[1], dtype) as w:
        for lo in range(0, len(logits), block):
            w.append(logits[lo:lo + block])
    return LogitsFile(path)


def test_writer_makes_a_npy_that_numpy_reads_and_file_slices_like_an_array(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(23, 7)).astype(np.float32)
    lf = _write(tmp_path / "a.npy", x)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), x)
    assert lf.shape == (23, 7) and len(lf) == 23 and lf.dtype == np.float32
    np.testing.assert_array_equal(lf[3:11], x[3:11])
    rows = np.array([22, 0, 5, 5, 17])
    np.testing.assert_array_equal(lf[rows], x[rows])
    np.testing.assert_array_equal(lf[x[:, 0] > 0], x[x[:, 0] > 0])
    assert not list(tmp_path.glob(".*tmp"))


def test_writer_leaves_nothing_when_the_block_loop_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with LogitsWriter(tmp_path / "b.npy", 3) as w:
            w.append(np.zeros((2, 3)))
            raise RuntimeError("predict failed")
    assert list(tmp_path.iterdir()) == []


def _sites(n_wells: int) -> pd.DataFrame:
    ids = [f"HUVEC-17_{1 + w // 20}_B{3 + w % 20:02d}" for w in range(n_wells)]
    rows = [(i, s) for i in ids for s in (1, 2)]
    return pd.DataFrame({"id_code": [r[0] for r in rows], "site": [r[1] for r in rows],
                         "experiment": "HUVEC-17", "cell_type": "HUVEC", "dataset": "test"})


def test_the_chain_functions_give_the_same_on_file_and_in_memory_with_blocks_that_split_wells(tmp_path,
                                                                                                 monkeypatch):
    monkeypatch.setattr(trainer.infer.logits, "CHUNK_ROWS", 7)
    rng = np.random.default_rng(1)
    sites = _sites(12)
    index = np.repeat(np.arange(len(sites)), 3)       # 3 views per site, well by well like the loader
    view = np.tile(np.arange(3), len(sites))
    logits = rng.normal(size=(len(index), 9)).astype(np.float32) * 3
    classes = np.arange(9)
    lf = _write(tmp_path / "l.npy", logits)
    for name in agg.METHODS:
        a = agg.aggregate(name, logits, index, sites, classes=classes)
        b = agg.aggregate(name, lf, index, sites, classes=classes)
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-6, atol=1e-6)
    ref = pd.DataFrame(logits).groupby(sites["id_code"].to_numpy()[index]).mean().sort_index().to_numpy()
    np.testing.assert_allclose(agg.mean_logits(lf, index, sites, classes=classes).scores, ref, rtol=1e-5)
    votes = agg.majority_vote(lf, index, sites, classes=classes).scores
    assert (np.floor(votes).sum(axis=1) == 6).all()  # 2 sites x 3 views vote once each
    np.testing.assert_array_equal(agg.single_view(lf, index, sites, classes=classes, view=view).scores,
                                  agg.single_view(logits, index, sites, classes=classes, view=view).scores)
    fa = build_features(logits, index, sites, classes=classes, top_k=4)
    fb = build_features(lf, index, sites, classes=classes, top_k=4)
    np.testing.assert_array_equal(fa.candidates, fb.candidates)
    np.testing.assert_allclose(fa.X, fb.X, rtol=1e-6, atol=1e-6)


def test_half_precision_moves_well_means_far_less_than_their_margins(tmp_path):
    """float16 logits (what predictions above 1 GiB store): a well's mean over its views moves by less than
    0.01 at logits of a trained model's range, so only wells whose top two classes are closer than that can flip."""
    rng = np.random.default_rng(2)
    sites = _sites(40)
    index = np.repeat(np.arange(len(sites)), 36)
    logits = (rng.normal(size=(len(index), 50)) * 4).astype(np.float32)
    full = agg.mean_logits(logits, index, sites, classes=np.arange(50)).scores
    half = agg.mean_logits(_write(tmp_path / "h.npy", logits, np.float16), index, sites,
                           classes=np.arange(50)).scores
    assert np.abs(full - half).max() < 0.01
    top2 = np.sort(full, axis=1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 0.02
    assert (full.argmax(1) == half.argmax(1))[clear].all()


def test_iter_rows_covers_every_row_once():
    x = np.arange(50, dtype=np.float64).reshape(25, 2)
    got = np.concatenate([b for _, b in iter_rows(x, chunk=4)])
    assert got.dtype == np.float32 and np.array_equal(got, x)
