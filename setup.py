"""cellio: cell-painting screens (RxRx1 and its Kaggle competition, RxRx2, RxRx3-core, JUMP, OME-Zarr plates) into
trained models fast.

The library (`cellio`) stays light: numpy, pandas, zarr, Pillow. Torch, DALI, Kaggle, Dask and the trainer's
dependencies are extras. Exact versions known to work together are pinned in constraints.txt.
"""
from setuptools import find_packages, setup

TORCH = ["torch>=2.6"]
extras = {
    "torch": TORCH,
    "dali": ["nvidia-dali-cuda130>=2.4"],
    "kaggle": ["kaggle>=2.2"],
    "dask": ["dask[distributed]>=2024.1", "distributed>=2024.1"],
    "synth": ["scikit-learn>=1.4"],
    "ingest": ["opencv-python-headless>=4.9"],  # faster PNG decode; PIL is the fallback
    "train": TORCH + ["torchvision>=0.21", "pyyaml>=6", "tensorboard>=2.15", "scikit-learn>=1.4",
                      "lightgbm>=4", "matplotlib>=3.8", "psutil>=5.9",
                      "timm>=1.0"],  # any timm backbone (model.name=timm:<name>); weights from local files only
    "s3": ["s3fs>=2024.1"],  # s3:// stores (gcsfs for gs://, adlfs for az:// work the same way)
    # RxRx3-core's JPEG 2000 images (cellio/datasets/rxrx3_core: imagecodecs decoded them faster than glymur here)
    "rxrx3": ["imagecodecs>=2024.1"],
    # the third-party writers/readers of the data sets beyond RxRx1 (TIFF, JPEG 2000, OME-Zarr), used by the format
    # generators in tests/formats/ and their tests
    "formats": ["tifffile>=2024.1", "imagecodecs>=2024.1", "ome-zarr>=0.18", "ome-zarr-models>=1.6"],
    # OME-Zarr plates in and out (cellio/datasets/ome_zarr/, cellio/export/): the NGFF metadata validation
    "omezarr": ["ome-zarr-models>=1.6"],
    "test": ["pytest>=8", "moto[server]>=5", "s3fs>=2024.1"],  # a local S3-compatible server for the tests
    # glymur needs the system OpenJPEG library (Debian: libopenjp2-7); only benchmarks/jp2_decode.py uses it
    "bench": ["matplotlib>=3.8", "tensorstore>=0.1.60", "opencv-python-headless>=4.9", "obstore>=0.4", "glymur>=0.14",
              # benchmarks/peers.py: the loaders users pick instead of cellio, and what it measures them with
              "torchvision>=0.21", "psutil>=5.9", "webdataset>=1.0.2", "lz4>=4.4", "litdata>=0.2.76", "spdl>=0.8",
              "moto[server]>=5", "s3fs>=2024.1"],
    # phenomic maps (trainer/maps, benchmarks/maps.py, tests/formats/rxrx3_maps.py): copairs for mAP, anndata for
    # .h5ad maps, and what the two packages installed WITHOUT their declared dependencies import: efaar-benchmarking
    # (its benchmarking module: geomloss, joblib, scikit-learn; its declared scvi-tools, wget, seaborn, ... are not
    # used) and cp-measure (mahotas, scikit-image, centrosome, whose pillow<12 pin conflicts with ours and guards
    # only a module cp-measure does not import). `make maps-deps` installs this extra plus those two (MAPS_NODEPS).
    "maps": ["copairs>=0.5", "anndata>=0.12", "geomloss>=0.3", "joblib>=1.3", "scikit-learn>=1.4",
             "matplotlib>=3.8", "scikit-image>=0.25", "mahotas>=1.4.13", "deprecation>=2", "imagecodecs>=2024.1"],
}
extras["test"] += extras["formats"]
extras["all"] = sorted({req for reqs in extras.values() for req in reqs})

setup(
    name="cellio",
    version="0.1.0",
    description="High-throughput loading of cell-painting screens (Zarr v3 + DALI) and a thin trainer",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["cellio", "cellio.*", "trainer", "trainer.*"]),
    package_data={"trainer": ["recipes/*.yaml"]},
    install_requires=[
        "numpy>=1.26",
        "pandas>=2.1",
        "pyarrow>=14",
        "zarr>=3.1,<3.2",
        "numcodecs>=0.13",
        "google-crc32c>=1.5",  # the crc32c checksum on every store chunk (format 1.1)
        "pillow>=10",
        "scipy>=1.11",
        "tqdm>=4.66",
        "fsspec>=2024.1",
    ],
    extras_require=extras,
    entry_points={"console_scripts": ["cellio=cellio.cli:main"]},
)
