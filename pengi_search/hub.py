"""The Hugging Face hub, asked once and briefly before a model is downloaded from it, and not at all for a cached one.

A hub that does not answer (a firewall that drops, a proxy that hangs, no route: the usual cluster node) costs
huggingface_hub a minute and a half of retries per file, each retry a warning on stderr, or, for a server that takes
the connection and never replies, no end at all (its first request has no timeout). One request with huggingface_hub's
own session (so `HF_ENDPOINT`, the proxy settings and a custom client factory apply) and its metadata timeout,
`HF_HUB_ETAG_TIMEOUT`, says up front whether downloading can work; once it has, the downloads run with the hub's own
timeouts, which bound each read and not the whole file, so a large model is never cut short.

Offline mode (`offline_setting`) is decided here too, for every download: the hub's switches and our own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

from .errors import first_line
from .waits import within

# Loggers whose warnings are the hub's retries ("Retrying in 8s [Retry 4/5]") and fallbacks, one per attempt.
_CHATTY_LOGGERS = ("huggingface_hub", "sentence_transformers")

OFFLINE_ENV = "PENGI_SEARCH_OFFLINE"
# Ours, then the Hugging Face libraries' own: huggingface_hub and transformers take either of theirs as offline, so a
# user who set only one expects us to stay off the network as they do.
_OFFLINE_ENVS = (OFFLINE_ENV, "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_setting() -> str | None:
    """The setting that forbids network access (`PENGI_SEARCH_OFFLINE=1`, `HF_HUB_OFFLINE=1` or
    `TRANSFORMERS_OFFLINE=1`), e.g. "HF_HUB_OFFLINE=1", or None: the one test of offline mode, for every download."""
    for name in _OFFLINE_ENVS:
        value = os.environ.get(name, "")
        if value.strip().upper() in {"1", "ON", "YES", "TRUE"}:  # what huggingface_hub accepts
            return f"{name}={value}"
    return None


def hub_endpoint() -> str:
    """The hub huggingface_hub downloads from: `HF_ENDPOINT`, else https://huggingface.co."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_cache() -> str:
    """Where huggingface_hub keeps what it downloaded (`HF_HUB_CACHE`, ...)."""
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def is_hub_name(name: str) -> bool:
    """Whether `name` names a model on the hub: not an existing path, and spelt as a hub name can be. Anything else
    (`./models/mini`, `/data/st`) is a folder, which the Hugging Face libraries report as missing without the hub."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not Path(name).exists()


def why_not_downloadable(repo_id: str) -> str | None:
    """Why `repo_id` cannot be downloaded now, to follow "not in the Hugging Face cache and": offline mode forbids it
    ("PENGI_SEARCH_OFFLINE=1 forbids downloading it", without asking the hub) or the hub does not answer
    (`unanswered`); None when it can be."""
    setting = offline_setting()
    return f"{setting} forbids downloading it" if setting else unanswered(repo_id)


def unanswered(repo_id: str, timeout: float | None = None) -> str | None:
    """Why the hub cannot serve `repo_id` now, e.g. "the hub (https://huggingface.co) did not answer within 10 s",
    or None when it answers.

    One GET of the model's API page, with no retry, waiting at most `timeout` seconds (default
    `HF_HUB_ETAG_TIMEOUT`) in all: looking up the name of the hub (or of the proxy), connecting and the reply. Any
    answer below 500 counts, a 404 too: the download that follows says what is wrong with the name. A 5xx is the
    hub, or a proxy in front of it, saying it cannot serve now, which huggingface_hub would otherwise retry for a
    minute and a half.
    """
    from huggingface_hub import constants

    seconds = constants.HF_HUB_ETAG_TIMEOUT if timeout is None else timeout
    url = f"{hub_endpoint()}/api/models/{quote(repo_id)}"
    try:
        what = within(seconds, lambda: _ask(url, seconds))
    except concurrent.futures.TimeoutError:  # no answer in time, a name lookup still waiting included
        what = f"did not answer within {seconds:g} s"
    if what is None:
        return None
    proxy = _proxy_for(url)
    return f"the hub ({hub_endpoint()}{f', through the proxy {proxy}' if proxy else ''}) {what}"


@contextlib.contextmanager
def cache_only() -> Iterator[None]:
    """Run a cache-only load (`local_files_only`) with huggingface_hub's telemetry off, so that it sends nothing:
    the user agent it builds even then fetches a registry of agents from the hub, once a day, and on every run while
    the hub does not answer (3 s each)."""
    from huggingface_hub import constants

    telemetry_off = constants.HF_HUB_DISABLE_TELEMETRY
    constants.HF_HUB_DISABLE_TELEMETRY = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_TELEMETRY = telemetry_off


@contextlib.contextmanager
def quiet_hub() -> Iterator[None]:
    """Run the block with huggingface_hub's and sentence-transformers' warnings held back (errors still show): a
    failure reaches the user as the command's one-line error, not as a screen of retries before it."""
    loggers = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _ask(url: str, seconds: float) -> str | None:
    """What went wrong asking the hub for `url` ("did not answer within 10 s", ...), or None when it answered."""
    from huggingface_hub.utils import get_session

    session = get_session()
    # The session's HTTP library (httpx2 under huggingface_hub 2, httpx under 1), for its error classes.
    http = sys.modules[type(session).__module__.partition(".")[0]]
    try:
        response = session.get(url, timeout=seconds)
    except http.TimeoutException:
        return f"did not answer within {seconds:g} s"
    except http.TransportError as err:  # refused, no route, a proxy that fails, a name that does not resolve
        return f"could not be reached ({first_line(err)})"
    if response.status_code < 500:
        return None
    return f"answered HTTP {response.status_code} {response.reason_phrase}".rstrip()


def _proxy_for(url: str) -> str | None:
    """The proxy the environment sets for `url` (`HTTPS_PROXY`, ... unless `NO_PROXY` names its host), without any
    user name or password in it: worth naming in an error, where a proxy that drops looks like a hub that does."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    shown = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    return shown._replace(netloc=shown.netloc.rpartition("@")[2]).geturl()
