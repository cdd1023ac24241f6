"""The loader's stream mode (whole shard objects, cellio/loading/streaming.py) and coalesced range reads
(cellio/store/remote.py): exactly once per epoch over 1 and 3 ranks, resume, determinism, pixels, both layouts,
a layout it cannot stream, a server killed mid-stream, and what "auto" picks.

The object-storage tests run against the moto server of tests/test_object_store.py (127.0.0.1 only).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cellio
from cellio.errors import PipelineConfigError, RemoteStoreError
from cellio.loading.streaming import StreamSampler
from cellio.store import open_store
from cellio.store.remote import coalesce_ranges

pytest.importorskip("moto.server", reason="needs moto[server] (pip install -e '.[test]')")
from test_object_store import FAST_FAIL, LIMIT, s3, s3_stores  # noqa: E402,F401  (fixtures)


def _loader(store, bs=4, **kw):
    kw.setdefault("crop_size", 7)
    kw.setdefault("num_workers", 0)
    kw.setdefault("device", "cpu")
    kw.setdefault("backend", "torch")
    kw.setdefault("read_mode", "stream")
    kw.setdefault("datasets", None)
    return cellio.create_loader(store, bs, **kw)


def _index(batches) -> list[int]:
    return [int(i) for b in batches for i in b["index"]]


@pytest.fixture(scope="module")
def remote(s3, s3_stores):
    return {layout: open_store(url, storage_options=s3.options) for layout, url in s3_stores.items()}


# ----------------------------------------------------------------------------------------------- the order
@pytest.mark.parametrize("policy", ["partial", "drop", "pad"])
@pytest.mark.parametrize("world,lanes", [(1, 1), (3, 1), (3, 2), (2, 4)])
def test_sampler_every_item_once_per_epoch_and_ranks_read_their_own_units(policy, world, lanes):
    units = np.repeat(np.arange(13), 8)[3:-2]  # 99 items, the first and last units partial
    samplers = [StreamSampler(units, batch_size=5, rank=r, world_size=world, seed=7, last_batch=policy, lanes=lanes,
                              buffer=3) for r in range(world)]
    seen = np.concatenate([s.rank_order(2)[0] for s in samplers])
    counts = [s.num_batches() for s in samplers]
    if policy == "partial":
        assert sorted(seen.tolist()) == list(range(len(units)))
    elif policy == "drop":
        assert len(set(seen.tolist())) == len(seen) and len(seen) == len(units) // (5 * world) * 5 * world
        assert len(set(counts)) == 1
    else:
        assert set(seen.tolist()) == set(range(len(units))) and len(seen) % (5 * world) == 0
    for s in samplers:
        b = s.batch_bounds(2)
        assert len(b) == s.num_batches() and (b[:, 1] - b[:, 0] <= 5).all()
    # a rank reads its own units: at most the two at its part's ends are shared with a neighbour
    if world > 1 and policy == "partial":
        sets = [set(units[s.rank_order(2)[0]].tolist()) for s in samplers]
        for a in range(world):
            for c in range(a + 1, world):
                assert len(sets[a] & sets[c]) <= 1


def test_sampler_batches_mix_only_a_buffer_of_units_and_the_order_is_seeded():
    units = np.repeat(np.arange(20), 10)
    s = StreamSampler(units, batch_size=8, seed=1, last_batch="partial", buffer=2)
    items, _ = s.rank_order(0)
    plan = s.plan(0)
    for (a, b) in plan.bounds:
        assert len(set(units[items[a:b]].tolist())) <= 4  # two windows of two units at most
    again = StreamSampler(units, batch_size=8, seed=1, last_batch="partial", buffer=2)
    assert np.array_equal(again.rank_order(0)[0], items)
    assert not np.array_equal(again.rank_order(1)[0], items)  # another epoch: another order
    other = StreamSampler(units, batch_size=8, seed=2, last_batch="partial", buffer=2)
    assert not np.array_equal(other.rank_order(0)[0], items)
    # unit order shuffled, not store order; sites within a window shuffled, not in store order
    first_units = units[items[:40]]
    assert not np.array_equal(np.unique(first_units), np.arange(4))
    assert not np.array_equal(items[:20], np.sort(items[:20]))


# ----------------------------------------------------------------------------------------------- the loader
@pytest.mark.parametrize("layout", ["chunked", "sharded"])
@pytest.mark.parametrize("world", [1, 3])
def test_every_site_exactly_once_per_epoch_from_the_server(remote, layout, world):
    store = remote[layout]
    seen = []
    for rank in range(world):
        loader = _loader(store, 4, rank=rank, world_size=world, last_batch="partial", seed=3)
        assert loader.read_mode == "stream"
        loader.set_epoch(1)
        seen += _index(list(loader))
    assert sorted(seen) == list(range(LIMIT))


def test_resume_mid_epoch_gives_exactly_the_remaining_batches(remote):
    store = remote["sharded"]
    full = _loader(store, 4, seed=5, last_batch="partial")
    full.set_epoch(2)
    reference = list(full)
    loader = _loader(store, 4, seed=5, last_batch="partial")
    loader.set_epoch(2)
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    state = loader.state_dict()
    del it
    fresh = _loader(store, 4, seed=5, last_batch="partial")
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert len(head) + len(rest) == len(reference)
    for x, y in zip(head + rest, reference):
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["image"], y["image"])
    with pytest.raises(PipelineConfigError, match="sampler differs"):  # other lanes: another order
        _loader(store, 4, seed=5, last_batch="partial", num_workers=2).load_state_dict(state)
    with pytest.raises(PipelineConfigError, match="sampler differs"):  # a random-mode loader is another order
        _loader(store, 4, seed=5, last_batch="partial", read_mode="random").load_state_dict(state)


def test_seeded_runs_reproduce_and_seeds_differ(remote):
    store = remote["chunked"]
    a = _index(list(_loader(store, 4, seed=9)))
    assert a == _index(list(_loader(store, 4, seed=9)))
    assert a != _index(list(_loader(store, 4, seed=10)))


@pytest.mark.parametrize("layout", ["chunked", "sharded"])
def test_pixels_equal_the_local_store(remote, tiny_store, layout):
    """Whole sites, no augmentation ([0, 1] scaling): every streamed site's pixels are the local store's."""
    store = remote[layout]
    loader = _loader(store, 5, augment="none", crop_size=11, last_batch="partial", seed=1)
    seen = 0
    for batch in loader:
        idx = batch["index"].numpy()
        local = tiny_store.read(idx, crop=(3, 0, 11, 11)).astype(np.float32) / 255  # the centre 11x11
        np.testing.assert_allclose(batch["image"].numpy(), local.transpose(0, 3, 1, 2), rtol=0, atol=1e-6)
        seen += len(idx)
    assert seen == LIMIT
    # the store-level API: whole units fetched, any sites decoded from them, checksums verified
    idx = np.random.default_rng(0).permutation(LIMIT)[:17]
    fetched = store.fetch_units(sorted(set(store.stream_units(idx).tolist())))
    np.testing.assert_array_equal(store.read_fetched(fetched, idx), tiny_store.read(idx))


def test_torch_worker_processes_each_stream_their_lane(remote):
    store = remote["sharded"]
    one = _loader(store, 3, seed=4, last_batch="partial", num_workers=2)
    got = list(one)
    assert sorted(_index(got)) == list(range(LIMIT))
    assert _index(got) == _index(list(_loader(store, 3, seed=4, last_batch="partial", num_workers=2)))


@pytest.mark.skipif(not cellio.dali_available(), reason="needs nvidia-dali")
def test_dali_backend_streams_every_site_once(remote):
    store = remote["sharded"]
    seen = []
    for rank in range(3):
        loader = _loader(store, 4, backend="dali", rank=rank, world_size=3, last_batch="partial", seed=2)
        seen += _index(list(loader))
    assert sorted(seen) == list(range(LIMIT))


def test_auto_streams_training_from_object_storage_only(remote, tiny_store):
    assert _loader(remote["sharded"], read_mode="auto").read_mode == "stream"
    assert _loader(tiny_store, read_mode="auto").read_mode == "random"  # local disks: random access is cheap
    assert _loader(remote["sharded"], read_mode="auto", train=False).read_mode == "random"
    assert _loader(remote["sharded"], read_mode="auto", balance="class").read_mode == "random"
    assert _loader(tiny_store, read_mode="stream").read_mode == "stream"  # asked for: local files stream too
    with pytest.raises(PipelineConfigError, match="train=False"):
        _loader(remote["sharded"], train=False)
    with pytest.raises(PipelineConfigError, match="read_mode"):
        _loader(remote["sharded"], read_mode="sequential")


def test_a_layout_it_cannot_stream_is_a_named_error(tmp_path, tiny_store):
    import shutil

    import zarr

    copy = tmp_path / "rechunked.zarr"
    shutil.copytree(tiny_store.path, copy)
    data = zarr.open_array(copy / "images", mode="r")[...]
    shutil.rmtree(copy / "images")
    z = zarr.create_array(copy / "images", shape=data.shape, chunks=(1, 17, 11, 6), shards=(4, 17, 11, 6),
                          dtype=data.dtype)
    z[...] = data
    s = open_store(copy)
    with pytest.raises(PipelineConfigError, match="not in a cellio layout.*read_mode='random'"):
        _loader(s)
    assert _loader(s, read_mode="auto").read_mode == "random"


def test_a_server_killed_mid_stream_errors_naming_the_object(s3, s3_stores, remote):
    store = open_store(s3_stores["sharded"], storage_options=s3.options, retry=FAST_FAIL)
    loader = _loader(store, 4, seed=6, last_batch="partial", stream_buffer=1)
    it = iter(loader)
    next(it)  # the first window is in memory; the next shard is fetched when it is needed
    s3.stop()
    try:
        with pytest.raises(RemoteStoreError, match=r"s3://cellio-test/sharded.zarr/images/c/\d+/0/0/0: the object "
                                                   r"store did not answer after 2 attempts"):
            for _ in it:
                pass
    finally:
        s3.start()
    assert sorted(_index(list(_loader(store, 4, seed=6, last_batch="partial")))) == list(range(LIMIT))


# ----------------------------------------------------------------------------------------------- coalescing
def test_coalesce_merges_near_ranges_of_one_object_only():
    reqs = [("a", 100, 200), ("b", 0, 10), ("a", 0, 100), ("a", 250, 300), ("a", 5000, 5100), ("b", 10, 20),
            ("c", 0, None), ("c", 40, 50)]
    merged, where = coalesce_ranges(reqs, gap=64)
    assert sorted(merged, key=str) == sorted([("a", 0, 300), ("a", 5000, 5100), ("b", 0, 20), ("c", 0, None)],
                                             key=str)
    payload = {"a": bytes(range(256)) * 20, "b": bytes(range(20)), "c": bytes(range(60))}
    fetched = [payload[k][s:] if e is None else payload[k][s:e] for k, s, e in merged]
    for (key, s, e), (m, off, n) in zip(reqs, where):
        got = fetched[m][off:] if n < 0 else fetched[m][off:off + n]
        assert got == (payload[key][s:] if e is None else payload[key][s:e])
    assert len(coalesce_ranges(reqs, gap=-1)[0]) == len(reqs)  # merging off


def test_a_batch_in_store_order_costs_one_request_per_shard(s3, s3_stores, tiny_store, monkeypatch):
    store = open_store(s3_stores["sharded"], storage_options=s3.options)
    store.read([0])  # the first shard's index cached
    fetcher = store._reader.fetcher
    sent: list[int] = []
    once = fetcher._once

    def counting(keys, starts, ends):
        sent.append(len(keys))
        return once(keys, starts, ends)

    monkeypatch.setattr(fetcher, "_once", counting)
    np.testing.assert_array_equal(store.read(np.arange(8)), tiny_store.read(np.arange(8)))
    assert sent == [1]  # eight sites of one shard, adjacent: one range request


def test_a_forked_child_of_a_process_running_obstore_reads_through_fsspec(s3, s3_stores, tiny_store):
    """obstore's runtime does not survive fork (a child's first request hangs): forked loader workers of a parent
    that used it read through fsspec instead, and still give the local store's pixels."""
    import multiprocessing as mp

    store = open_store(s3_stores["chunked"], storage_options={k: v for k, v in s3.options.items()
                                                              if k != "config_kwargs"})
    assert type(store._reader.fetcher).__name__ == "ObstoreFetcher"
    store.read([1, 2])  # the parent's obstore runtime is running now
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got, client = pool.apply_async(_read_in_child, (store,)).get(timeout=60)
    assert client == "RangeFetcher"
    np.testing.assert_array_equal(got, tiny_store.read([3, 40, 7]))


def _read_in_child(store):
    out = store.read([3, 40, 7])
    return out, type(store._reader.fetcher).__name__
