"""Keeping secrets out of what flor-flows prints: passwords in URLs, secret-looking args.

The store keeps args as given; everything shown to people (errors, Prefect states and
artifacts) goes through `redact_url` and `mask_secrets`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

MASK = "***"
_SECRET_WORDS = frozenset(
    {"password", "passwd", "pwd", "pass", "secret", "token", "key", "apikey", "credential"}
    | {"credentials", "auth", "passphrase"}
)


def redact_url(url: str) -> str:
    """`url` with the password of its user info, if any, replaced by `***`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:{MASK}@{parts.netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc))


def redact_urls(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***` (`redact_url`)."""
    return re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+", lambda found: redact_url(found[0]), text)


def is_secret(name: str) -> bool:
    """Whether an arg or column name looks like it holds a secret: one of its words (split at
    `_`, `-`, `.` and case changes) is password, token, key, secret, ..."""
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()
    return any(word in _SECRET_WORDS for word in re.split(r"[^a-z0-9]+", words))


def mask_secrets(row: Mapping[str, Any]) -> dict[str, Any]:
    """`row` with the values of secret-looking keys masked (missing values stay missing)."""
    return {k: MASK if v is not None and is_secret(k) else v for k, v in row.items()}
