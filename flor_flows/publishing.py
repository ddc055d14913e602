"""Publishing to the Prefect API as a view of the store, never at the cost of the work.

Artifacts (tables, charts, progress) show what the store holds. A flow whose Prefect API
went away goes on with its work (replays and training scripts record into the store on
their own), so a call that publishes is skipped while the API is known to be down, and
its failure is a warning, rather than waiting out Prefect's retries (about a minute per
call) and failing the flow on them. A call in flight when the API goes away tries again at
most PUBLISH_RETRIES time (after 2 s: Prefect's backoff), not the client's default 5 (about a
minute, during which the flow would start no replay).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from flor_flows.api import prefect_settings

PUBLISH_RETRIES = 1
API_DOWN = threading.Event()
"""Set while a watch of this process (`reconcile.ApiWatch`) finds the Prefect API down."""

T = TypeVar("T")
P = ParamSpec("P")
_logger = logging.getLogger("flor_flows")


def published(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
    """`call(...)`, a call that publishes to the Prefect API; None while the API is down or
    when the call fails for want of it."""
    import httpx

    if API_DOWN.is_set():
        return None
    try:
        with prefect_settings("client", max_retries=PUBLISH_RETRIES):
            return call(*args, **kwargs)
    except httpx.HTTPError as exc:
        _logger.warning("not published to the Prefect API: %s", exc)
        return None
