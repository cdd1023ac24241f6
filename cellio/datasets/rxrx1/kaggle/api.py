"""Talking to Kaggle: the authenticated `KaggleApi`, and Kaggle's failures as one-line cellio errors.

The `kaggle` package authenticates (and may print a long notice to stdout) the moment it is imported, so it is
imported lazily inside `make_api`, and only after `check_credentials` found a usable credential.
"""
from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Callable
from typing import Any

from ....errors import CellioError, CredentialsError, DownloadError, MissingDependencyError
from ..layout import KAGGLE_SLUG

__all__ = ["make_api", "call_api"]

log = logging.getLogger(__name__)


def make_api() -> Any:
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


def call_api(what: str, fn: Callable[..., Any], *args: Any, hint: str = "", **kwargs: Any) -> Any:
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
