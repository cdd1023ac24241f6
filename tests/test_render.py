"""cellio.render and `cellio show`: the official composite, the channel grid, reading a site from raw or store."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cellio.errors import ImageError, MetadataError, StoreError
from cellio.render import autocontrast, channel_grid, load_site, render_site, rgb_composite
from cellio.datasets.layout import Channel
from cellio.datasets.rxrx1.layout import RXRX1
from cellio.schema import COMPOSITE_COLORS, COMPOSITE_RANGES

H, W = 17, 11


def _site(values: dict[int, int], h: int = 1, w: int = 1) -> np.ndarray:
    img = np.zeros((h, w, 6), dtype=np.uint8)
    for channel, v in values.items():
        img[..., channel - 1] = v
    return img


@pytest.mark.parametrize("values, expected", [
    ({}, (0, 0, 0)),
    ({1: 51}, (19, 0, 249)),                 # w1 at the top of its range: its full tint
    ({1: 200}, (19, 0, 249)),                # above the range: clipped to 1
    ({3: 32}, (127, 0, 12)),                 # 0.5 * (255, 0, 25), truncated
    ({1: 51, 3: 32}, (146, 0, 255)),         # tints add; blue 249 + 12 clipped at 255
    ({4: 100}, (23, 133, 131)),              # 100/191 * (45, 255, 252) = (23.56, 133.51, 131.94)
    ({2: 107, 5: 89}, (255, 255, 255)),      # (42+250, 255+0, 31+253) clipped
    ({6: 1}, (1, 1, 0)),                     # 1/191 * (254, 255, 40) = (1.33, 1.34, 0.21)
])
def test_composite_matches_hand_computation(values, expected):
    out = rgb_composite(_site(values), RXRX1)
    assert out.dtype == np.uint8 and out.shape == (1, 1, 3)
    assert tuple(int(v) for v in out[0, 0]) == expected


@pytest.mark.parametrize("kind", ["random_odd_size", "every_value"])
def test_composite_matches_the_reference_formula(kind):
    if kind == "random_odd_size":
        img = np.random.default_rng(0).integers(0, 256, (H, W, 6), dtype=np.uint8)
    else:  # every uint8 value in every channel, each channel in a different order
        img = np.stack([np.roll(np.arange(256, dtype=np.uint8), 37 * c) for c in range(6)], -1).reshape(16, 16, 6)
    h, w = img.shape[:2]
    # rxrx1-utils, per channel: scale to range, clip at 1, outer product with the tint, int cast; sum; clip 255.
    ref = np.zeros((h * w, 3), dtype=np.int64)
    for c in range(6):
        (lo, hi), tint = COMPOSITE_RANGES[c], np.array(COMPOSITE_COLORS[c])
        x = (img[:, :, c] / 255) / ((hi - lo) / 255) + lo / 255
        x = np.where(x > 1.0, 1.0, x)
        ref += np.array(np.outer(x, tint), dtype=int)
    ref = np.where(ref > 255, 255, ref).reshape(h, w, 3)
    out = rgb_composite(img, RXRX1)
    assert out.shape == (h, w, 3)
    np.testing.assert_array_equal(out, ref)


def test_grid_layout_on_odd_sizes():
    img = np.random.default_rng(1).integers(0, 200, (H, W, 6), dtype=np.uint8)
    gap = 2
    grid = channel_grid(img, RXRX1, gap=gap)
    assert grid.dtype == np.uint8 and grid.shape == (2 * H + gap, 3 * W + 2 * gap)
    for c in range(6):
        y, x = (c // 3) * (H + gap), (c % 3) * (W + gap)
        np.testing.assert_array_equal(grid[y:y + H, x:x + W], autocontrast(img[:, :, c]))
    assert (grid[H:H + gap, :] == grid[H, 0]).all()  # a separator row, same grey everywhere


def test_autocontrast_stretches_and_survives_flat_channels():
    ramp = np.arange(H * W, dtype=np.uint8).reshape(H, W)
    out = autocontrast(ramp)
    assert out.min() == 0 and out.max() == 255
    assert (autocontrast(np.full((H, W), 7, np.uint8)) == 128).all()
    assert (autocontrast(np.zeros((H, W), np.uint8)) == 0).all()


def test_render_site_and_labels():
    img = np.random.default_rng(2).integers(0, 256, (128, 96, 6), dtype=np.uint8)
    plain = render_site(img, RXRX1)
    assert plain.dtype == np.uint8 and plain.shape == (2 * 128 + 2, 2 * 96 + 4 + 3 * 96 + 4, 3)
    np.testing.assert_array_equal(plain[:256:2, :192:2], rgb_composite(img, RXRX1))
    titled = render_site(img, RXRX1, title="HUVEC-07_1_B03 site 1")
    assert titled.shape[0] > plain.shape[0] and titled.shape[1:] == plain.shape[1:]
    # Tiles at least 96 px wide get a label drawn into their top-left corner; smaller ones stay untouched.
    assert not np.array_equal(channel_grid(img, RXRX1)[:12, :60], channel_grid(img, RXRX1, labels=False)[:12, :60])


@pytest.mark.parametrize("bad", [np.zeros((H, W, 3), np.uint8), np.zeros((6, H, W), np.uint8),
                                 np.full((H, W, 6), 300, np.int32), np.zeros((H, W, 6), np.float32)])
def test_bad_input_is_refused(bad):
    with pytest.raises(ImageError, match=r"\(H, W, 6\)|uint8"):
        rgb_composite(bad, RXRX1)


# ---------------------------------------------------------------------------------------------- reading + CLI


def _first_site(sites):
    row = sites.iloc[0]
    return str(row["id_code"]), int(row["site"])


def test_load_site_from_raw_directory(tiny_raw):
    from cellio import read_metadata

    sites = read_metadata(tiny_raw)
    id_code, site = _first_site(sites)
    image, row, layout = load_site(tiny_raw, id_code, site)
    assert image.shape == (H, W, 6) and image.dtype == np.uint8
    assert layout == RXRX1.replace(site_shape=(H, W))
    assert row["id_code"] == id_code
    for c in range(6):
        png = np.asarray(Image.open(tiny_raw / row[f"path_w{c + 1}"]))
        np.testing.assert_array_equal(image[:, :, c], png)


def test_unknown_id_code_or_site_lists_valid_ones(tiny_raw):
    with pytest.raises(MetadataError, match=r"'HUVEC-99_1_B03' is not in .*valid id_codes look like HUVEC-"):
        load_site(tiny_raw, "HUVEC-99_1_B03")
    from cellio import read_metadata

    id_code, _ = _first_site(read_metadata(tiny_raw))
    with pytest.raises(MetadataError, match=rf"{id_code} has site\(s\) \[1, 2\] .*not site 3"):
        load_site(tiny_raw, id_code, 3)


def test_neither_store_nor_raw_is_refused(tmp_path):
    with pytest.raises(StoreError, match="neither a cellio store"):
        load_site(tmp_path, "HUVEC-01_1_B03")
    with pytest.raises(StoreError, match="does not exist"):
        load_site(tmp_path / "nope", "HUVEC-01_1_B03")


def test_cli_show_raw_writes_png(tiny_raw, tmp_path, capsys):
    from cellio import read_metadata
    from cellio.cli import main

    id_code, _ = _first_site(read_metadata(tiny_raw))
    out = tmp_path / "site.png"
    assert main(["show", str(tiny_raw), id_code, "--site", "2", "-o", str(out)]) == 0
    png = np.asarray(Image.open(out))
    assert png.ndim == 3 and png.shape[2] == 3 and png.shape[1] == 2 * W + 4 + 3 * W + 4
    assert f"wrote {out}" in capsys.readouterr().out
    assert main(["show", str(tiny_raw), "NOPE-01_1_B03", "-o", str(tmp_path / "x.png")]) == 2
    assert "valid id_codes look like" in capsys.readouterr().err


def test_cli_show_store_matches_raw(tiny_store, tiny_raw, tmp_path):
    from cellio.cli import main

    row = tiny_store.sites.iloc[len(tiny_store) - 1]
    id_code, site = str(row["id_code"]), int(row["site"])
    from_store, _, store_layout = load_site(tiny_store.path, id_code, site)
    from_raw, _, raw_layout = load_site(tiny_raw, id_code, site)
    np.testing.assert_array_equal(from_store, from_raw)
    assert store_layout == raw_layout == tiny_store.layout
    out = tmp_path / "store.png"
    assert main(["show", str(tiny_store.path), id_code, "--site", str(site), "-o", str(out)]) == 0
    assert Image.open(out).mode == "RGB"


def test_the_composite_and_grid_follow_the_layout():
    """A layout of 4 channels, one left out of the composite: the composite sums the shown ones with their own
    tints and windows; the grid has two rows (three channels, then one)."""
    lay = RXRX1.replace(name="four", channels=(
        Channel("A", "a", (255, 0, 0), (0, 100)), Channel("B", "b", None, None),
        Channel("C", "c", (0, 0, 255), (50, 150)), Channel("D", "d", (0, 255, 0), (0, 255))))
    img = np.zeros((1, 1, 4), np.uint8)
    img[..., 0], img[..., 1], img[..., 2], img[..., 3] = 50, 255, 100, 0
    # A: 50/100 = 0.5 -> 127 red; B not shown; C: (100/255)/(100/255) + 50/255 = 1.196 -> 1 -> 255 blue
    assert tuple(int(v) for v in rgb_composite(img, lay)[0, 0]) == (127, 0, 255)
    big = np.random.default_rng(3).integers(0, 256, (H, W, 4), dtype=np.uint8)
    grid = channel_grid(big, lay, gap=2)
    assert grid.shape == (2 * H + 2, 3 * W + 4)
    np.testing.assert_array_equal(grid[H + 2:, :W], autocontrast(big[:, :, 3]))
    assert (grid[H + 2:, W:] == grid[H, 0]).all()  # the rest of the second row: separator grey
    with pytest.raises(ImageError, match=r"expected a four site as \(H, W, 4\)"):
        rgb_composite(np.zeros((H, W, 6), np.uint8), lay)
