"""The chunk codecs are registered objects: the documented pipelines, a named error for an unknown one, and a codec
registered at run time that ingest, the CLI, the reader and verify all take without another change."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cellio.errors import StoreError
from cellio.store import codecs


def test_the_registered_codecs_and_their_pipelines():
    assert codecs.list_codecs() == ("none", "lz4", "zstd")
    assert codecs.get_codec("none").pipeline() == [{"name": "bytes"}, {"name": "crc32c"}]
    assert codecs.get_codec("lz4").pipeline() == [
        {"name": "bytes"}, {"name": "blosc", "configuration": {"typesize": 1, "cname": "lz4", "clevel": 1,
                                                             "shuffle": "bitshuffle", "blocksize": 0}},
        {"name": "crc32c"}]
    assert codecs.get_codec("zstd").pipeline(checksum=False) == [
        {"name": "bytes"}, {"name": "zstd", "configuration": {"level": 1, "checksum": False}}]
    first = codecs.get_codec("lz4").pipeline()
    first[1]["configuration"]["clevel"] = 9  # a caller's copy: the registered codec is not changed through it
    assert codecs.get_codec("lz4").pipeline()[1]["configuration"]["clevel"] == 1
    assert [codecs.get_codec(n).size_estimate for n in codecs.list_codecs()] == [1.0, 0.6, 0.6]
    with pytest.raises(StoreError, match="codec 'brotli' is unknown; expected one of none, lz4, zstd"):
        codecs.get_codec("brotli")
    with pytest.raises(StoreError, match="codec 'lz4' is already registered"):
        codecs.register_codec(codecs.get_codec("lz4"))


def test_a_pipeline_decodes_through_its_compressors_zarr_name():
    site = np.random.default_rng(0).integers(0, 40, (17, 11, 6), dtype=np.uint8)
    for name in codecs.list_codecs():
        codec = codecs.chunk_codec(codecs.get_codec(name).pipeline())
        out = np.empty_like(site)
        codec.decode(codec.encode(site), out, file="x")
        np.testing.assert_array_equal(out, site)
    with pytest.raises(StoreError, match="codec 'gzip' is not handled by the fast path"):
        codecs.chunk_codec([{"name": "bytes"}, {"name": "gzip", "configuration": {"level": 5}}])


def test_a_codec_registered_at_run_time_is_a_choice_everywhere(tmp_path, tiny_raw, tiny_store, monkeypatch):
    import cellio
    from cellio.cli import build_parser

    monkeypatch.setattr(codecs, "_CODECS", dict(codecs._CODECS))  # the registration ends with the test
    codecs.register_codec(codecs.ImageCodec(
        "zstd9", {"name": "zstd", "configuration": {"level": 9, "checksum": False}}, codecs.get_codec("zstd").build,
        0.55, "zstd level 9: smaller, slower to write"))
    ingest = next(a for a in build_parser()._actions if a.dest == "command").choices["ingest"]
    assert "zstd9" in next(a for a in ingest._actions if a.dest == "codec").choices
    cellio.ingest(tiny_raw, tmp_path / "z9.zarr", codec="zstd9", workers=1, progress=False, limit=12)
    meta = json.loads((tmp_path / "z9.zarr" / "images" / "zarr.json").read_text())
    inner = meta["codecs"][0]["configuration"]["codecs"]
    assert inner[1] == {"name": "zstd", "configuration": {"level": 9, "checksum": False}}
    store = cellio.open_store(tmp_path / "z9.zarr")
    assert store.attrs["codec"] == "zstd9"
    np.testing.assert_array_equal(store.read(np.arange(12)), tiny_store.read(np.arange(12)))
    assert cellio.verify_store(tmp_path / "z9.zarr", progress=False).ok
