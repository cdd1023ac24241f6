"""JPEG 2000 decode speed: imagecodecs vs glymur (and Pillow) on RxRx3-core-like images (issue 23 asks which).

512x512 uint8 single-channel cell-like images (tests/formats/cells.py), encoded two ways with imagecodecs: lossless
(what tests/formats/rxrx3_core.py writes) and lossy at ~12 KB an image (the real set: 18 GB / 1,335,606 images
is ~13 KB). Each repeat decodes all N images, one thread, cases interleaved; medians of the repeats.

- imagecodecs: `jpeg2k_decode(bytes)` straight from memory, as a reader gets them out of a parquet row
- glymur: `Jp2k(path)[:]`; glymur decodes files only, so the images are written once to /dev/shm (tmpfs) and
  every decode opens its file (the reader would have to write each parquet blob to a file first)
- pillow: `Image.open(BytesIO(bytes))` then `np.asarray`, for reference (Pillow bundles its own OpenJPEG)

glymur needs the system OpenJPEG library (Debian: apt-get install libopenjp2-7).

    python benchmarks/jp2_decode.py [--images 32] [--repeats 7]
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import imagecodecs
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "formats"))
from _common import Case, compare, environment, report  # noqa: E402
from cells import render_field, to_uint8  # noqa: E402

ROLES = ("nucleus", "er", "actin", "rna", "mito", "membrane")


def images(n: int, size: int = 512) -> list[np.ndarray]:
    out = []
    for i in range(n):
        field = render_field(ROLES, (size, size), seed=0, ids=(i,))
        out.append(to_uint8(field[i % len(ROLES)]))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    try:
        import glymur
    except ImportError:
        sys.exit("glymur is not installed: pip install glymur (and apt-get install libopenjp2-7)")
    if not glymur.version.openjpeg_version or glymur.version.openjpeg_version == "0.0.0":
        sys.exit("glymur finds no OpenJPEG library: apt-get install libopenjp2-7")
    imgs = images(a.images)
    cases = []
    tmp = tempfile.TemporaryDirectory(dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    for label, level in (("lossless", 0), ("lossy", 37)):  # level 37: ~12-13 KB an image, as the real files
        blobs = [imagecodecs.jpeg2k_encode(im, level=level, codecformat=imagecodecs.JPEG2K.CODEC.JP2) for im in imgs]
        paths = []
        for k, b in enumerate(blobs):
            path = Path(tmp.name) / f"{label}_{k}.jp2"
            path.write_bytes(b)
            paths.append(path)
        if level == 0:  # the three decoders agree on the lossless images
            for im, b, path in zip(imgs, blobs, paths):
                assert np.array_equal(imagecodecs.jpeg2k_decode(b), im)
                assert np.array_equal(glymur.Jp2k(path)[:], im)
                assert np.array_equal(np.asarray(Image.open(io.BytesIO(b))), im)
        nbytes = sum(im.nbytes for im in imgs)
        extra = {"encoding": label, "mean_kb": round(sum(map(len, blobs)) / len(blobs) / 1024, 1)}
        cases += [
            Case(f"imagecodecs {label}", lambda bl=blobs: [imagecodecs.jpeg2k_decode(b, numthreads=1) for b in bl],
                 items=len(imgs), nbytes=nbytes, group=label, extra=extra),
            Case(f"glymur {label}", lambda ps=paths: [glymur.Jp2k(q)[:] for q in ps],
                 items=len(imgs), nbytes=nbytes, group=label, extra=extra),
            Case(f"pillow {label}", lambda bl=blobs: [np.asarray(Image.open(io.BytesIO(b))) for b in bl],
                 items=len(imgs), nbytes=nbytes, group=label, extra=extra),
        ]
    glymur.set_option("lib.num_threads", 1)
    results = compare(cases, warmup=1, repeats=a.repeats)
    env = environment(imagecodecs=imagecodecs.__version__, glymur=glymur.__version__,
                      openjpeg_system=glymur.version.openjpeg_version, pillow=Image.__version__)
    report(results, "jp2_decode", baseline="imagecodecs lossless",
           title=f"JPEG 2000 decode, {a.images} x 512x512 uint8, 1 thread", env=env)
    tmp.cleanup()


if __name__ == "__main__":
    main()
