"""RxRx1 from and to Kaggle: credentials, a resumable download, unzip into the Kaggle layout, verify, submit.

The `kaggle` package authenticates (and may print a long notice to stdout) the moment it is imported, so it is
imported lazily inside `_make_api`, and only after `check_credentials` found a usable credential. Everything that
does not talk to Kaggle (`check_credentials`, `unzip_dataset`, `verify_dataset`, `validate_submission`) works
offline. Credentials are never printed or logged: only where they came from and the username.

    cellio.check_credentials()                      # -> CredentialSource(kind, location, username)
    cellio.download("data/rxrx1")                   # resumable; unzips and verifies
    cellio.submit("submission.csv", "densenet161 + plate assignment")
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import re
import shutil
import stat
import sys
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import CellioError, CredentialsError, DownloadError, MetadataError, MissingDependencyError
from .schema import DATASETS, KAGGLE_SLUG, N_TREATMENTS, PATH_COLUMNS, parse_experiment

__all__ = [
    "CredentialKind",
    "CredentialSource",
    "DownloadReport",
    "UnzipReport",
    "VerifyReport",
    "SubmissionReport",
    "RemoteFile",
    "KNOWN_FILE_BYTES",
    "MANIFEST_NAME",
    "PART_DIR",
    "check_credentials",
    "download",
    "unzip_dataset",
    "verify_dataset",
    "validate_submission",
    "submit",
]

log = logging.getLogger(__name__)

MANIFEST_NAME = ".cellio-download.json"  # per destination: what was fetched completely, and extracted
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

# ---------------------------------------------------------------------------------------------- credentials


class CredentialKind(str, Enum):
    """Every credential form kaggle 2.x accepts, in the order its `KaggleApi.authenticate` tries them."""

    ENV_TOKEN = "env_token"      # KAGGLE_API_TOKEN (the token itself, or a path to a file holding it)
    TOKEN_FILE = "token_file"    # ~/.kaggle/access_token (or access_token.txt)
    ENV_KEY = "env_key"          # KAGGLE_USERNAME + KAGGLE_KEY (legacy API key)
    KAGGLE_JSON = "kaggle_json"  # legacy kaggle.json in KAGGLE_CONFIG_DIR, ~/.kaggle or ~/.config/kaggle
    OAUTH = "oauth"              # refresh token cached by `kaggle auth login` in ~/.kaggle/credentials.json


@dataclass(frozen=True)
class CredentialSource:
    """Where the Kaggle credentials come from. Holds no secret: `location` is an env var name or a file path."""

    kind: CredentialKind
    location: str
    username: str | None = None

    def describe(self) -> str:
        who = f" (user {self.username})" if self.username else ""
        return f"{self.kind.value} from {self.location}{who}"


_HOW_TO = """Kaggle credentials were not found. cellio accepts every form kaggle 2.x accepts:
  1. OAuth login (recommended): run `kaggle auth login`; it caches a refresh token in ~/.kaggle/credentials.json.
  2. API token: on https://www.kaggle.com/settings/api click "Generate New Token", then either
       export KAGGLE_API_TOKEN=<token>
     or save it to ~/.kaggle/access_token and run `chmod 600 ~/.kaggle/access_token`.
  3. Legacy API key file: on the same page click "Create Legacy API Key" and save the downloaded kaggle.json to
     ~/.kaggle/kaggle.json (or $KAGGLE_CONFIG_DIR/kaggle.json), then `chmod 600 ~/.kaggle/kaggle.json`.
  4. Legacy API key in the environment: export KAGGLE_USERNAME=<username> KAGGLE_KEY=<key>.
You must also accept the competition rules once at https://www.kaggle.com/competitions/{slug}/rules."""


def _home() -> Path:
    return Path(os.path.expanduser("~"))


def _legacy_config_dir() -> Path:
    """kaggle.json's directory, resolved exactly as kaggle 2.2.5's KaggleApi.config_dir."""
    configured = os.environ.get("KAGGLE_CONFIG_DIR")
    if configured:
        return Path(configured)
    default = _home() / ".kaggle"
    if sys.platform.startswith("linux") and not default.exists():
        return Path(os.environ.get("XDG_CONFIG_HOME") or (_home() / ".config")) / "kaggle"
    return default


def _require_private(path: Path) -> None:
    """Refuse a credentials file that group or others can read (kaggle only warns; we stop)."""
    if os.name == "nt":
        return
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o044:
        who = " and ".join(w for w, bit in (("group", 0o040), ("others", 0o004)) if mode & bit)
        raise CredentialsError(
            f"Kaggle credentials file {path} is readable by {who} (mode {mode:03o}, expected 600). "
            f"Fix: chmod 600 {path}"
        )


def _token_in_file(path: Path) -> bool:
    return bool(path.read_text(encoding="utf-8", errors="replace").strip())


def _read_json_object(path: Path, what: str) -> tuple[dict[str, Any] | None, str | None]:
    """(object, None) or (None, problem). The problem names the file and position, never the content."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return None, f"{what} {path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{what} {path} cannot be read ({type(exc).__name__})"
    if not isinstance(data, dict):
        return None, f"{what} {path} must hold a JSON object, found a JSON {type(data).__name__}"
    return data, None


def check_credentials() -> CredentialSource:
    """Find the credential kaggle would use, without importing kaggle or touching the network.

    Raises CredentialsError for a credentials file readable by group/others (with the chmod fix), a malformed
    kaggle.json when nothing else is usable, or no credentials at all (listing every accepted form).
    """
    env = os.environ
    problems: list[str] = []
    kaggle_dir = _home() / ".kaggle"

    # 1. Access token: KAGGLE_API_TOKEN (kagglesdk also accepts a path to a token file there), then the files.
    token = env.get("KAGGLE_API_TOKEN", "").strip()
    if token:
        token_path = Path(token)
        if len(token) < 4096 and token_path.is_file():
            _require_private(token_path)
            if _token_in_file(token_path):
                return CredentialSource(CredentialKind.ENV_TOKEN, f"KAGGLE_API_TOKEN -> {token_path}")
            problems.append(f"KAGGLE_API_TOKEN names the file {token_path}, which is empty")
        else:
            return CredentialSource(CredentialKind.ENV_TOKEN, "KAGGLE_API_TOKEN")
    for name in ("access_token", "access_token.txt"):
        path = kaggle_dir / name
        if path.is_file():
            _require_private(path)
            if _token_in_file(path):
                return CredentialSource(CredentialKind.TOKEN_FILE, str(path))
            problems.append(f"token file {path} is empty")

    # 2. Legacy API key: kaggle.json values, overridden by KAGGLE_USERNAME / KAGGLE_KEY (as kaggle merges them).
    json_path = _legacy_config_dir() / "kaggle.json"
    file_values: dict[str, Any] = {}
    if json_path.is_file():
        _require_private(json_path)
        data, problem = _read_json_object(json_path, "legacy credentials file")
        if problem:
            problems.append(problem)
        else:
            file_values = data or {}
    username = env.get("KAGGLE_USERNAME") or file_values.get("username")
    key = env.get("KAGGLE_KEY") or file_values.get("key")
    if username and key:
        from_env = bool(env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"))
        if from_env:
            return CredentialSource(CredentialKind.ENV_KEY, "KAGGLE_USERNAME + KAGGLE_KEY", str(username))
        return CredentialSource(CredentialKind.KAGGLE_JSON, str(json_path), str(username))
    if json_path.is_file() and file_values:
        missing = [k for k, v in (("username", username), ("key", key)) if not v]
        problems.append(f"legacy credentials file {json_path} lacks {' and '.join(repr(m) for m in missing)} "
                        f"(expected {{\"username\": ..., \"key\": ...}} as downloaded from kaggle.com)")
    elif env.get("KAGGLE_USERNAME") or env.get("KAGGLE_KEY"):
        have, lack = ("KAGGLE_USERNAME", "KAGGLE_KEY") if env.get("KAGGLE_USERNAME") else ("KAGGLE_KEY",
                                                                                           "KAGGLE_USERNAME")
        problems.append(f"{have} is set but {lack} is not")

    # 3. OAuth refresh token cached by `kaggle auth login` (kagglesdk KaggleCredentials.DEFAULT_CREDENTIALS_FILE).
    oauth_path = kaggle_dir / "credentials.json"
    if oauth_path.is_file():
        _require_private(oauth_path)
        data, problem = _read_json_object(oauth_path, "OAuth credentials file")
        if problem:
            problems.append(problem)
        elif not data or not data.get("refresh_token"):
            problems.append(f"OAuth credentials file {oauth_path} has no 'refresh_token'; run `kaggle auth login`")
        else:
            if problems:  # a broken file kaggle would skip: say so, but let the working login through
                log.warning("Using the OAuth login; ignoring: %s", "; ".join(problems))
            return CredentialSource(CredentialKind.OAUTH, str(oauth_path), data.get("username") or None)

    how_to = _HOW_TO.format(slug=KAGGLE_SLUG)
    if problems:
        raise CredentialsError("No usable Kaggle credentials: " + "; ".join(problems) + ".\n" + how_to)
    raise CredentialsError(how_to)


# ---------------------------------------------------------------------------------------------- talking to Kaggle


def _make_api() -> Any:
    """An authenticated kaggle KaggleApi. Its stdout chatter is captured and logged at debug level."""
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as exc:
        raise MissingDependencyError("kaggle", "kaggle", "Talking to Kaggle") from exc
    except SystemExit as exc:  # kaggle calls exit(1) after printing its help when no credential works
        raise CredentialsError(
            "Kaggle rejected the credentials cellio found (an expired or revoked token, or a wrong key). "
            "Create a new one at https://www.kaggle.com/settings/api or run `kaggle auth login`."
        ) from exc
    except Exception as exc:
        raise DownloadError(f"could not authenticate with Kaggle ({type(exc).__name__}: {exc}); "
                            "check the network connection and retry") from exc
    finally:
        if chatter.getvalue().strip():
            log.debug("kaggle: %s", chatter.getvalue().strip())
    return api


def _call(what: str, fn: Callable[..., Any], *args: Any, hint: str = "", **kwargs: Any) -> Any:
    """Run one Kaggle API call; turn network and HTTP failures into one-line cellio errors (plus `hint`)."""
    try:
        return fn(*args, **kwargs)
    except CellioError:
        raise
    except KeyboardInterrupt:
        raise
    except SystemExit as exc:
        raise DownloadError(f"{what}: the kaggle package exited ({exc.code})") from exc
    except Exception as exc:
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status == 401:
            raise CredentialsError(f"{what}: Kaggle answered 401 Unauthorized; the credentials are expired or "
                                   "revoked. Create new ones at https://www.kaggle.com/settings/api") from exc
        if status == 403:
            raise DownloadError(f"{what}: Kaggle answered 403 Forbidden; accept the competition rules once at "
                                f"https://www.kaggle.com/competitions/{KAGGLE_SLUG}/rules and retry") from exc
        if status is not None:
            raise DownloadError(f"{what}: Kaggle answered HTTP {status} ({exc})") from exc
        name = type(exc).__name__
        if "Connection" in name or "Timeout" in name or isinstance(exc, OSError):
            raise DownloadError(f"{what}: could not reach Kaggle ({name}: {exc}); check the network and "
                                f"retry{hint}") from exc
        raise DownloadError(f"{what} failed ({name}: {exc})") from exc


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
        page = _call("listing the competition files", api.competition_list_files, KAGGLE_SLUG,
                     page_token=token, page_size=20)
        files += [RemoteFile(str(f.name), int(getattr(f, "total_bytes", 0) or 0)) for f in (page.files or [])]
        token = getattr(page, "next_page_token", None) or None
        if not token:
            return files, False
        if len(files) >= _MAX_LISTED_FILES:
            return files, True


# ---------------------------------------------------------------------------------------------- the manifest


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class _Manifest:
    """DEST/.cellio-download.json: files fetched completely (remote and local size) and zips fully extracted."""

    path: Path
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    extracted: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, dest: Path) -> _Manifest:
        path = dest / MANIFEST_NAME
        if not path.is_file():
            return cls(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return cls(path, dict(data.get("files", {})), dict(data.get("extracted", {})))
        except (json.JSONDecodeError, AttributeError, TypeError):
            log.warning("Ignoring the unreadable download manifest %s; files are re-checked against Kaggle", path)
            return cls(path)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(json.dumps({"format_version": 1, "slug": KAGGLE_SLUG, "files": self.files,
                                   "extracted": self.extracted}, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.path)

    def is_complete(self, dest: Path, name: str, remote_size: int | None) -> bool:
        local = dest / name
        if not local.is_file():
            return False
        size = local.stat().st_size
        entry = self.files.get(name)
        if entry is not None:
            same_remote = not remote_size or not entry.get("remote_bytes") or entry["remote_bytes"] == remote_size
            return entry.get("bytes") == size and same_remote
        # A file put there by hand or by the kaggle CLI: adopt it only when its size is the listed size.
        return bool(remote_size) and size == remote_size

    def mark_file(self, name: str, remote_size: int, size: int) -> None:
        self.files[name] = {"remote_bytes": remote_size, "bytes": size, "completed": _now()}
        self.save()

    def mark_extracted(self, zip_path: Path, members: int) -> None:
        self.extracted[zip_path.name] = {"bytes": zip_path.stat().st_size, "members": members,
                                         "completed": _now()}
        self.save()

    def is_extracted(self, zip_name: str, size: int) -> bool:
        entry = self.extracted.get(zip_name)
        return entry is not None and entry.get("bytes") == size


# ---------------------------------------------------------------------------------------------- disk space


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


def _bytes_needed(dest: Path, wanted: Iterable[tuple[str, int]], manifest: _Manifest, force: bool,
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


# ---------------------------------------------------------------------------------------------- download


@dataclass(frozen=True)
class UnzipReport:
    zips: tuple[str, ...]
    extracted: int
    skipped: int
    bytes_written: int

    def summary(self) -> str:
        return (f"unzipped {', '.join(self.zips) or 'nothing'}: {self.extracted} files extracted "
                f"({self.bytes_written / _GB:.2f} GB), {self.skipped} already in place")


@dataclass(frozen=True)
class VerifyReport:
    root: Path
    sites: int
    files: int
    sites_per_dataset: dict[str, int]

    def summary(self) -> str:
        per = ", ".join(f"{k} {v}" for k, v in self.sites_per_dataset.items())
        return f"verified {self.root}: {self.sites} sites ({per}), all {self.files} image files present"


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
    _call(f"downloading {remote.name}", api.competition_download_file, KAGGLE_SLUG, remote.name,
          path=str(staging), force=force, quiet=not progress, hint=_RESUME_HINT)
    got = staging / remote.name
    wrapped = staging / (remote.name + ".zip")  # Kaggle serves large single files zipped as NAME.zip
    if not got.is_file() and wrapped.is_file():
        with zipfile.ZipFile(wrapped) as zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if len(members) != 1:
                raise DownloadError(f"{wrapped}: expected one member ({remote.name}), found {len(members)}")
            _extract_member(zf, members[0], got)
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
    _call("downloading the competition bundle", api.competition_download_files, KAGGLE_SLUG,
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
    manifest = _Manifest.load(dest)
    if check_disk:
        names = list(files) if files is not None else [n for n in KNOWN_FILE_BYTES if n != "pixel_stats.csv.zip"]
        _check_disk(dest, _bytes_needed(dest, [(n, KNOWN_FILE_BYTES.get(n, 0)) for n in names], manifest, force,
                                        unzip), "estimated from the published file sizes")
    if api is None:
        api = _make_api()

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


# ---------------------------------------------------------------------------------------------- unzip


def _is_experiment(name: str) -> bool:
    try:
        parse_experiment(name)
    except ValueError:
        return False
    return True


def _member_target(zip_path: Path, member: str) -> str | None:
    """Relative destination of a zip member in the Kaggle layout, or None for entries to skip.

    train.zip may hold `train/HUVEC-01/Plate1/...` or start at `HUVEC-01/Plate1/...`; both land in
    `train/HUVEC-01/Plate1/...`. Anything else (CSV members, a bundle's top level) keeps its path.
    """
    name = member.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if not parts or name.endswith("/") or parts[0] == "__MACOSX" or parts[-1] == ".DS_Store":
        return None
    if name.startswith("/") or ".." in parts or re.match(r"^[A-Za-z]:", name):
        raise DownloadError(f"{zip_path}: member {member!r} would be written outside the data set root; "
                            "refusing to extract this archive")
    dataset = zip_path.name[: -len(".zip")] if zip_path.name.endswith(".zip") else zip_path.stem
    if parts[0] not in DATASETS and dataset in DATASETS and _is_experiment(parts[0]):
        return f"{dataset}/{name}"
    return name


def _extract_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                    on_bytes: Callable[[int], Any] | None = None, made_dirs: set[str] | None = None) -> None:
    """Stream one member to TARGET.part and rename it; zipfile checks the CRC when the stream ends.

    `made_dirs` remembers directories already created: ~750k images land in ~200 plate folders, and a
    mkdir per file costs more than the small write.
    """
    folder = str(target.parent)
    if made_dirs is None or folder not in made_dirs:
        os.makedirs(folder, exist_ok=True)
        if made_dirs is not None:
            made_dirs.add(folder)
    part = folder + os.sep + target.name + ".part"
    with zf.open(info) as src, open(part, "wb") as out:
        while chunk := src.read(1 << 22):
            out.write(chunk)
            if on_bytes is not None:
                on_bytes(len(chunk))
    os.replace(part, target)


def _discover_zips(dest: Path) -> list[Path]:
    names = [f"{KAGGLE_SLUG}.zip", "train.zip", "test.zip"]
    found = [dest / n for n in names if (dest / n).is_file()]
    found += sorted(p for p in dest.glob("*.csv.zip") if p.is_file())
    return found


def unzip_dataset(dest: str | Path, zips: Sequence[str | Path] | None = None,
                  progress: bool = True) -> UnzipReport:
    """Extract the competition zips in `dest` into the Kaggle layout (train/, test/ trees and the CSVs).

    Idempotent and resumable: a member already extracted with the right size is skipped, and each member is
    written to NAME.part and renamed, so an interrupted run leaves no truncated image behind. `zips` defaults
    to the bundle, train.zip, test.zip and *.csv.zip found in `dest`; zips found inside the bundle are
    extracted too.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    queue = [Path(z) if Path(z).is_absolute() or not (dest / z).exists() else dest / z
             for z in (zips if zips is not None else _discover_zips(dest))]
    manifest = _Manifest.load(dest)
    done: list[str] = []
    extracted = skipped = written = 0
    while queue:
        zip_path = queue.pop(0)
        if zip_path.name in done:
            continue
        if not zip_path.is_file():
            raise DownloadError(f"cannot unzip {zip_path}: the file does not exist; run `cellio download` first")
        try:
            zf = zipfile.ZipFile(zip_path)
        except zipfile.BadZipFile as exc:
            raise DownloadError(f"{zip_path} is not a complete zip archive ({exc}); delete it and rerun "
                                "`cellio download` to fetch it again") from exc
        with zf:
            work: list[tuple[zipfile.ZipInfo, Path]] = []
            for info in zf.infolist():
                rel = _member_target(zip_path, info.filename)
                if rel is None:
                    continue
                target = dest / rel
                if target.is_file() and target.stat().st_size == info.file_size:
                    skipped += 1
                else:
                    work.append((info, target))
            total = sum(info.file_size for info, _ in work)
            log.info("%s: %d members to extract (%.2f GB)", zip_path.name, len(work), total / _GB)
            made_dirs: set[str] = set()
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"unzip {zip_path.name}",
                      disable=not progress or not work) as bar:
                for info, target in work:
                    try:
                        _extract_member(zf, info, target, bar.update, made_dirs)
                    except (zipfile.BadZipFile, EOFError, zlib.error) as exc:
                        raise DownloadError(f"{zip_path}: member {info.filename} is corrupt ({exc}); delete the "
                                            "zip and rerun `cellio download`") from exc
                    extracted += 1
                    written += info.file_size
            members = len(zf.infolist())
            nested = [dest / _member_target(zip_path, i.filename) for i in zf.infolist()
                      if i.filename.endswith(".zip") and _member_target(zip_path, i.filename)]
        manifest.mark_extracted(zip_path, members)
        done.append(zip_path.name)
        queue += [n for n in nested if n.parent == dest]
    return UnzipReport(tuple(done), extracted, skipped, written)


# ---------------------------------------------------------------------------------------------- verify


def _missing_files(root: Path, rel_paths: Iterable[str]) -> list[str]:
    """The relative paths that do not exist: one directory listing per plate folder, not one stat per file."""
    listed: dict[str, set[str]] = {}
    missing = []
    for rel in rel_paths:
        folder, _, name = rel.rpartition("/")
        if folder not in listed:
            try:
                listed[folder] = {e.name for e in os.scandir(root / folder) if e.is_file()}
            except (FileNotFoundError, NotADirectoryError):
                listed[folder] = set()
        if name not in listed[folder]:
            missing.append(rel)
    return missing


def verify_dataset(dest: str | Path, datasets: Sequence[str] = DATASETS) -> VerifyReport:
    """Check that every site listed in the CSVs under `dest` has its six image files.

    Uses `read_metadata(dest, check_files=True)`; `datasets` limits the check to "train" or "test" (after
    downloading only one of the image zips). Raises DownloadError naming how many files are missing, how many
    per experiment, and the first few paths.
    """
    from .metadata import read_metadata

    dest = Path(dest)
    whole = set(datasets) >= set(DATASETS)
    try:
        sites = read_metadata(dest, check_files=whole)
        failure = None
    except CellioError as exc:
        failure = exc
        try:  # re-read without the file check, to say exactly which files are missing where
            sites = read_metadata(dest, check_files=False)
        except CellioError as exc2:
            raise DownloadError(f"cannot verify {dest}: {exc2}") from exc2
    sites = sites[sites["dataset"].isin(list(datasets))]
    experiment_of = {rel: exp for exp, *paths in sites[["experiment", *PATH_COLUMNS]].itertuples(index=False)
                     for rel in paths}
    missing = _missing_files(dest, experiment_of)
    if missing:
        per_experiment = Counter(experiment_of[rel] for rel in missing)
        where = ", ".join(f"{exp}: {n}" for exp, n in sorted(per_experiment.items())[:12])
        first = "\n  ".join(missing[:10])
        raise DownloadError(
            f"{dest}: {len(missing)} of {len(experiment_of)} image files listed in the CSVs are missing "
            f"({where}{', ...' if len(per_experiment) > 12 else ''}). First missing:\n  {first}\n"
            "Rerun `cellio download` (it resumes), or unzip again with cellio.kaggle.unzip_dataset"
        )
    if failure is not None:
        raise DownloadError(f"verification of {dest} failed: {failure}") from failure
    per_dataset = {str(k): int(v) for k, v in sites["dataset"].value_counts().sort_index().items()}
    report = VerifyReport(dest, len(sites), len(experiment_of), per_dataset)
    log.info("%s", report.summary())
    return report


# ---------------------------------------------------------------------------------------------- submit


@dataclass(frozen=True)
class SubmissionReport:
    path: Path
    rows: int
    checked_against: Path | None  # the CSV whose id_codes the submission was matched against, if any

    def summary(self) -> str:
        against = f"matches every id_code of {self.checked_against}" if self.checked_against else \
            "id_codes not checked against the test set (no sample_submission.csv/test.csv found)"
        return f"{self.path}: {self.rows} rows, header id_code,sirna, sirna in 0..{N_TREATMENTS - 1}; {against}"


def _read_id_codes(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = next(reader, [])
        if "id_code" not in header:
            raise MetadataError(f"{path}: expected an 'id_code' column, found columns {header}")
        col = header.index("id_code")
        return [row[col] for row in reader if row]


def _examples(items: Sequence[Any], n: int = 5) -> str:
    shown = ", ".join(str(i) for i in items[:n])
    return shown + (f", ... ({len(items)} in all)" if len(items) > n else "")


def validate_submission(path: str | Path, sample_submission: str | Path | None = None) -> SubmissionReport:
    """Check a submission CSV before uploading it.

    Header exactly `id_code,sirna`; every sirna an integer in 0..1107; no id_code twice; and, when the test
    id_codes are known (`sample_submission`, else sample_submission.csv or test.csv beside the file), every
    one present and no other. Raises MetadataError listing each problem with line numbers.
    """
    path = Path(path)
    if not path.is_file():
        raise MetadataError(f"submission file {path} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        header = [h.strip() for h in next(reader, [])]
        if header != ["id_code", "sirna"]:
            raise MetadataError(f"{path}: header must be exactly 'id_code,sirna', found {','.join(header)!r}")
        ids: list[str] = []
        bad_shape: list[str] = []
        bad_sirna: list[str] = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                bad_shape.append(f"line {line} has {len(row)} fields")
                continue
            id_code, sirna = row[0].strip(), row[1].strip()
            ids.append(id_code)
            if not re.fullmatch(r"\d+", sirna) or int(sirna) >= N_TREATMENTS:
                bad_sirna.append(f"line {line} {id_code}: {sirna!r}")
    problems: list[str] = []
    if not ids and not bad_shape:
        problems.append("no rows")
    if bad_shape:
        problems.append(f"rows need exactly 2 fields: {_examples(bad_shape)}")
    if bad_sirna:
        problems.append(f"sirna must be an integer in 0..{N_TREATMENTS - 1}: {_examples(bad_sirna)}")
    dupes = [i for i, n in Counter(ids).items() if n > 1]
    if dupes:
        problems.append(f"id_codes listed more than once: {_examples(dupes)}")

    reference: Path | None = Path(sample_submission) if sample_submission is not None else None
    if reference is None:
        reference = next((p for p in (path.parent / "sample_submission.csv", path.parent / "test.csv")
                          if p.is_file() and p.resolve() != path.resolve()), None)
    if reference is not None:
        if not reference.is_file():
            raise MetadataError(f"sample submission {reference} does not exist")
        expected = _read_id_codes(reference)
        seen = set(ids)
        missing = [i for i in expected if i not in seen]
        unknown = sorted(seen - set(expected))
        if missing:
            problems.append(f"{len(missing)} test id_codes of {reference.name} are missing: {_examples(missing)}")
        if unknown:
            problems.append(f"{len(unknown)} id_codes are not test wells of {reference.name}: "
                            f"{_examples(unknown)}")
    else:
        log.warning("%s: no sample_submission.csv or test.csv beside it; id_codes not checked against the test "
                    "set (pass sample_submission=...)", path)
    if problems:
        raise MetadataError(f"submission {path} is invalid: " + "; ".join(problems))
    return SubmissionReport(path, len(ids), reference)


def submit(file: str | Path, message: str, *, check: bool = True, sample_submission: str | Path | None = None,
           progress: bool = True, api: Any | None = None) -> str:
    """Validate `file` (unless check=False) and submit it to the competition; returns Kaggle's answer."""
    file = Path(file)
    source = check_credentials()
    if not message or not message.strip():
        raise MetadataError("a submission needs a non-empty message (-m)")
    if check:
        log.info("%s", validate_submission(file, sample_submission).summary())
    elif not file.is_file():
        raise MetadataError(f"submission file {file} does not exist")
    if api is None:
        api = _make_api()
    log.info("Submitting %s to %s as %s", file, KAGGLE_SLUG, source.describe())
    response = _call(f"submitting {file.name}", api.competition_submit, str(file), message, KAGGLE_SLUG,
                     quiet=not progress)
    answer = str(getattr(response, "message", "") or "")
    if answer == getattr(api, "COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE", "Could not submit to competition"):
        raise DownloadError(f"uploading {file} to Kaggle failed ({answer}); check the network and retry")
    return answer or "submitted"
