"""Kaggle credentials: find the one kaggle 2.x would use, without importing kaggle or touching the network.

Credentials are never printed or logged: only where they came from and the username.
"""
from __future__ import annotations

import json
import logging
import os
import stat
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from ....errors import CredentialsError
from ..layout import KAGGLE_SLUG

__all__ = ["CredentialKind", "CredentialSource", "check_credentials"]

log = logging.getLogger(__name__)


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
