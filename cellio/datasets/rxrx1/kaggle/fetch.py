"""The resumable download: disk check, Kaggle's file listing, one file (or the whole bundle) at a time.

A download runs in DEST/.cellio-download.part/ and is renamed into place only once complete; the manifest
(`manifest.py`) records what is done, so a rerun fetches only what is missing.
"""
from __future__ import annotations

import logging
import os
import shutil
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ....errors import DownloadError
from ..layout import DATASETS, KAGGLE_SLUG
from .api import call_api, make_api
from .credentials import CredentialSource, check_credentials
from .dataset import UnzipReport, VerifyReport, extract_member, unzip_dataset, verify_dataset
from .manifest import Manifest

__all__ = ["PART_DIR", "KNOWN_FILE_BYTES", "RemoteFile", "DownloadReport", "download"]

log = logging.getLogger(__name__)

PART_DIR = ".cellio-download.part"        # downloads land here and are renamed into place only when complete
_GB = 1e9

# Published sizes (bytes) of the competition files, used for the disk check *before* any network call; the exact
# sizes from Kaggle's file listing replace them afterwards. The zips hold already-compressed PNGs, so unzipping
# needs about as much again (+5 % for per-file filesystem overhead on ~750k small files). The split of the ~46 GB
# between train.zip and test.zip follows the site counts (81,224 : 44,286).
KNOWN_FILE_BYTES: dict[str, int] = {
    "train.zip": int(29.8 * _GB),
    "test.zip": int(16.3 * _GB),
    "train.csv": 1_300_000,
    "test.csv": 700_000,
    "train_controls.csv": 200_000,
    "test_controls.csv": 100_000,
    "pixel_stats.csv": 70_000_000,
    "pixel_stats.csv.zip": 25_000_000,
    "sample_submission.csv": 500_000,
}
_UNZIP_FACTOR = 1.05
_DISK_MARGIN = int(1 * _GB)
_RESUME_HINT = "; finished files are kept and a rerun resumes"
_MAX_LISTED_FILES = 200  # a listing longer than this enumerates images one by one: use the bundle instead


@dataclass(frozen=True)
class RemoteFile:
    """One file of the competition as Kaggle lists it (size in bytes; 0 when Kaggle does not say)."""

    name: str
    size: int


def _list_remote_files(api: Any) -> tuple[list[RemoteFile], bool]:
    """All files Kaggle lists for the competition, and whether the listing was cut short (images one by one)."""
    files: list[RemoteFile] = []
    token: str | None = None
    while True:
        page = call_api("listing the competition files", api.competition_list_files, KAGGLE_SLUG,
                        page_token=token, page_size=20)
        files += [RemoteFile(str(f.name), int(getattr(f, "total_bytes", 0) or 0)) for f in (page.files or [])]
        token = getattr(page, "next_page_token", None) or None
        if not token:
            return files, False
        if len(files) >= _MAX_LISTED_FILES:
            return files, True


def _existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_disk(dest: Path, need: int, basis: str) -> None:
    where = _existing_parent(dest)
    free = shutil.disk_usage(where).free
    if need > free:
        raise DownloadError(
            f"not enough disk space for the RxRx1 download on {where}: need {need / _GB:.1f} GB ({basis}), "
            f"{free / _GB:.1f} GB free. Free {(need - free) / _GB:.1f} GB, choose another DEST, or pass "
            "--skip-disk-check (check_disk=False) if you know better"
        )
    log.info("Disk space on %s: need %.1f GB (%s), %.1f GB free", where, need / _GB, basis, free / _GB)


def _bytes_needed(dest: Path, wanted: Iterable[tuple[str, int]], manifest: Manifest, force: bool,
                  unzip: bool) -> int:
    """Bytes still to write: files not yet complete, plus the unzipped tree of zips not yet extracted."""
    need = _DISK_MARGIN
    for name, size in wanted:
        complete = not force and manifest.is_complete(dest, name, size)
        if not complete:
            need += size
        if unzip and name.endswith(".zip") and not (complete and manifest.is_extracted(name, size)):
            need += int(size * _UNZIP_FACTOR)
    return need


@dataclass(frozen=True)
class DownloadReport:
    dest: Path
    credentials: CredentialSource
    downloaded: tuple[str, ...]
    skipped: tuple[str, ...]
    unzip: UnzipReport | None
    verify: VerifyReport | None

    def summary(self) -> str:
        lines = [f"credentials: {self.credentials.describe()}",
                 f"downloaded into {self.dest}: {', '.join(self.downloaded) or 'nothing new'}"]
        if self.skipped:
            lines.append(f"already complete: {', '.join(self.skipped)}")
        if self.unzip is not None:
            lines.append(self.unzip.summary())
        if self.verify is not None:
            lines.append(self.verify.summary())
        return "\n".join(lines)


def _select(listing: list[RemoteFile], files: Sequence[str] | None) -> list[RemoteFile]:
    by_name = {f.name: f for f in listing}
    if files is None:
        # pixel_stats.csv is offered both plain and zipped: fetch one copy.
        return [f for f in listing if not (f.name.endswith(".zip") and f.name[:-4] in by_name)]
    unknown = [n for n in files if n not in by_name]
    if unknown:
        raise DownloadError(f"--files {' '.join(unknown)}: not a file of {KAGGLE_SLUG}; Kaggle lists "
                            f"{', '.join(sorted(by_name)[:20])}")
    return [by_name[n] for n in dict.fromkeys(files)]


def _fetch(api: Any, dest: Path, remote: RemoteFile, force: bool, progress: bool) -> int:
    """Download one file into PART_DIR (kaggle resumes a partial there), then rename it into DEST."""
    staging = dest / PART_DIR
    staging.mkdir(parents=True, exist_ok=True)
    log.info("Downloading %s (%.2f GB)", remote.name, remote.size / _GB)
    call_api(f"downloading {remote.name}", api.competition_download_file, KAGGLE_SLUG, remote.name,
             path=str(staging), force=force, quiet=not progress, hint=_RESUME_HINT)
    got = staging / remote.name
    wrapped = staging / (remote.name + ".zip")  # Kaggle serves large single files zipped as NAME.zip
    if not got.is_file() and wrapped.is_file():
        with zipfile.ZipFile(wrapped) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise DownloadError(f"{wrapped}: expected one member ({remote.name}), found {len(members)}")
            extract_member(zf, members[0], got)
        wrapped.unlink()
    if not got.is_file():
        raise DownloadError(f"Kaggle reported {remote.name} as downloaded, but {got} was not written; rerun")
    size = got.stat().st_size
    if remote.size and size != remote.size:
        # Not fatal: Kaggle lists some files by their uncompressed size; a truncated zip fails at unzip (CRC).
        log.warning("%s: Kaggle lists %d bytes, the download has %d", remote.name, remote.size, size)
    os.replace(got, dest / remote.name)
    return size


def _fetch_bundle(api: Any, dest: Path, force: bool, progress: bool) -> Path:
    """The whole competition as one zip (used when Kaggle lists images one by one instead of train/test.zip)."""
    staging = dest / PART_DIR
    staging.mkdir(parents=True, exist_ok=True)
    log.info("Downloading the whole competition bundle %s.zip", KAGGLE_SLUG)
    call_api("downloading the competition bundle", api.competition_download_files, KAGGLE_SLUG,
             path=str(staging), force=force, quiet=not progress, hint=_RESUME_HINT)
    got = staging / f"{KAGGLE_SLUG}.zip"
    if not got.is_file():
        raise DownloadError(f"Kaggle reported the bundle as downloaded, but {got} was not written; rerun")
    final = dest / got.name
    os.replace(got, final)
    return final


def download(dest: str | Path, *, files: Sequence[str] | None = None, force: bool = False,
             check_disk: bool = True, unzip: bool = True, verify: bool = True, progress: bool = True,
             api: Any | None = None) -> DownloadReport:
    """Download RxRx1 from Kaggle into `dest`, unzip it into the Kaggle layout and verify every site's files.

    Resumable: files recorded complete in DEST/.cellio-download.json (or matching Kaggle's listed size) are
    skipped; a download runs in DEST/.cellio-download.part/ and is renamed into place only once complete, so an
    interrupted run never leaves a file that looks complete. `files` selects a subset by Kaggle file name
    (e.g. ["train.csv", "test.csv"]). `api` is an already authenticated kaggle KaggleApi (tests pass a fake).
    Disk space is checked before any network call (published sizes) and again with Kaggle's exact sizes.
    """
    dest = Path(dest)
    source = check_credentials()
    log.info("Kaggle credentials: %s", source.describe())
    manifest = Manifest.load(dest)
    if check_disk:
        names = list(files) if files is not None else [n for n in KNOWN_FILE_BYTES if n != "pixel_stats.csv.zip"]
        _check_disk(dest, _bytes_needed(dest, [(n, KNOWN_FILE_BYTES.get(n, 0)) for n in names], manifest, force,
                                        unzip), "estimated from the published file sizes")
    if api is None:
        api = make_api()

    listing, truncated = _list_remote_files(api)
    has_zips = {"train.zip", "test.zip"} <= {f.name for f in listing}
    downloaded: list[str] = []
    skipped: list[str] = []
    zips: list[Path] = []
    if files is None and not has_zips and (truncated or any("/" in f.name for f in listing)):
        bundle = dest / f"{KAGGLE_SLUG}.zip"
        if force or not (bundle.name in manifest.files and manifest.is_complete(dest, bundle.name, None)):
            if check_disk:
                zipped = sum(size for name, size in KNOWN_FILE_BYTES.items() if name != "pixel_stats.csv.zip")
                _check_disk(dest, _DISK_MARGIN + int(zipped * (1 + _UNZIP_FACTOR)),
                            "the whole-competition bundle plus its unzipped tree, from the published sizes")
            size = _fetch_bundle(api, dest, force, progress).stat().st_size
            manifest.mark_file(bundle.name, 0, size)
            downloaded.append(bundle.name)
        else:
            skipped.append(bundle.name)
        zips.append(bundle)
    else:
        selected = _select(listing, files)
        todo = [f for f in selected if force or not manifest.is_complete(dest, f.name, f.size)]
        skipped = [f.name for f in selected if f not in todo]
        if check_disk and todo:
            _check_disk(dest, _bytes_needed(dest, [(f.name, f.size) for f in selected], manifest, force, unzip),
                        "Kaggle's listed sizes")
        for remote in todo:
            size = _fetch(api, dest, remote, force, progress)
            manifest.mark_file(remote.name, remote.size, size)
            downloaded.append(remote.name)
        zips = [dest / f.name for f in selected if f.name.endswith(".zip")]
    staging = dest / PART_DIR
    if staging.is_dir() and not any(staging.iterdir()):
        staging.rmdir()

    unzip_report = unzip_dataset(dest, zips=zips, progress=progress) if unzip and zips else None
    verify_report = None
    image_sets = tuple(d for d in DATASETS if any(z.name in (f"{d}.zip", f"{KAGGLE_SLUG}.zip") for z in zips))
    if verify and unzip and image_sets:
        verify_report = verify_dataset(dest, datasets=image_sets)
    elif verify:
        log.info("Skipping verification: %s", "nothing was unzipped" if not unzip else
                 "no image archive (train.zip/test.zip) was part of this download")
    return DownloadReport(dest, source, tuple(downloaded), tuple(skipped), unzip_report, verify_report)
