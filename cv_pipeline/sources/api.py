"""The Stack Exchange API 2.3 as a `QuestionSource`: top questions by votes, with answers embedded.

One custom filter embeds question and answer bodies, so a page of 100 questions with all their
answers costs one request. Secrets (app key, access token) are added to the URL by a transport
wrapper *below* httpx's client, so the URL httpx logs, and any request attached to an exception,
never carries them.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import json
import logging
import random
import re
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import ValidationError

from cv_pipeline.sources.base import QuestionSource, QuotaExhausted, SourceConfigError, SourceError, TransientSourceError
from cv_pipeline.sources.models import RawAnswer, RawQuestion, SourcePage, pick_top_answer
from cv_pipeline.sources.ratelimit import Clock, RequestGovernor, governor_for

log = logging.getLogger("cv_pipeline.api")

DEFAULT_BASE_URL = "https://api.stackexchange.com/2.3"

# Everything RawQuestion/RawAnswer need, on top of the default filter (which lacks the bodies and
# the embedded answers). Owner names, avatars and profile links are excluded at the source: we keep
# only user ids (attribution links), never names.
FILTER_INCLUDE = (
    "question.body",
    "question.answers",
    "question.title",
    "question.link",
    "question.tags",
    "question.score",
    "question.question_id",
    "question.creation_date",
    "question.last_activity_date",
    "question.closed_date",
    "question.closed_reason",
    "question.locked_date",
    "question.community_owned_date",
    "question.content_license",
    "question.owner",
    "question.answer_count",
    "question.accepted_answer_id",
    "answer.answer_id",
    "answer.body",
    "answer.score",
    "answer.is_accepted",
    "answer.creation_date",
    "answer.owner",
    "answer.content_license",
    "shallow_user.user_id",
)
FILTER_EXCLUDE = (
    "shallow_user.display_name",
    "shallow_user.profile_image",
    "shallow_user.link",
    "shallow_user.reputation",
    "shallow_user.accept_rate",
)

# error_id -> what it means for us. Retryable ids wait and try again; the rest fail at once.
RETRYABLE_ERROR_IDS = {500, 502, 503}
_QUOTA_MESSAGE = re.compile(r"available in (\d+) seconds?", re.IGNORECASE)
_SECRET_IN_URL = re.compile(r"((?:^|[?&;\s])(?:key|access_token)=)[^&\s\"']+", re.IGNORECASE)
# Up to the last "@" before the path: a password may hold "@", quotes or anything else but "/", "?", "#".
_USERINFO_IN_URL = re.compile(r"(?<=//)[^/?#\s]+@")
_DAY = 24 * 3600
#: "more requests available in N seconds" with N up to this is waited out; beyond it the
#: daily quota is spent and we stop with QuotaExhausted instead of sleeping for hours.
MAX_THROTTLE_WAIT_S = 300


def redact_url_secrets(text: str) -> str:
    """Replace the values of ``key=`` and ``access_token=`` query parameters, and a URL's ``user:password@``, with ``***``."""
    return _USERINFO_IN_URL.sub("***@", _SECRET_IN_URL.sub(r"\1***", text))


def _without_userinfo(url: str) -> str:
    """``url`` without a ``user:password@`` part: what messages and files may show of a base URL."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


class _RedactSecretsFilter(logging.Filter):
    """Last line of defence on the HTTP loggers: httpx logs every request URL at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact_url_secrets(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


# A filter applies only to records logged on its own logger, not to those its children pass up: httpcore logs
# (at DEBUG) on these, response headers included, where a redirect's Location repeats the query string.
_HTTP_LOGGERS = ("httpx", "httpcore.connection", "httpcore.http11", "httpcore.http2", "httpcore.proxy", "httpcore.socks",
                 "cv_pipeline.api")  # and this client's own, for what a server says in a retried error


def _install_httpx_log_filter() -> None:
    for name in _HTTP_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RedactSecretsFilter) for f in logger.filters):
            logger.addFilter(_RedactSecretsFilter())


def proxy_for(url: str) -> str | None:
    """The proxy the environment names for ``url`` (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY; NO_PROXY).

    httpx reads these itself only when it builds its own transport, and this client brings one (the
    credential wrapper), so it applies them here. Loopback hosts (the sample site) never use a proxy.
    """
    import ipaddress
    import urllib.request

    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if loopback or urllib.request.proxy_bypass_environment(host):
        return None
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if proxy and "://" not in proxy:  # "proxy.corp:3128", as curl and httpx take it
        proxy = "http://" + proxy
    return proxy or None


class _CredentialTransport(httpx.BaseTransport):
    """Adds key/access_token to the query on the way out only; httpx logs the URL without them."""

    def __init__(self, inner: httpx.BaseTransport, credentials: dict[str, str]):
        self._inner = inner
        self._credentials = credentials

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self._credentials:
            request = httpx.Request(
                request.method,
                request.url.copy_merge_params(self._credentials),
                headers=request.headers,
                stream=request.stream,
                extensions=request.extensions,
            )
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def _check_base_url(base_url: str) -> None:
    """An http(s) URL with a host, or a clear error (retrying a malformed URL would only look like an outage)."""
    shown = base_url.rsplit("@", 1)[-1]  # never echo a user:password part
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError):
        url = None
    if url is None or url.scheme not in ("http", "https") or not url.host:
        raise SourceConfigError(
            f"api_base_url {shown!r} is not an http(s) URL with a host: use e.g. {DEFAULT_BASE_URL} (the default)"
        )


class _Unreadable(Exception):
    """A body that is not the JSON object the API promises (truncated gzip, cut-off JSON, ...)."""


def _decode_body(content: bytes) -> dict[str, Any]:
    # The API always gzips; httpx only inflates when Content-Encoding says so, so a body that
    # still starts with the gzip magic was sent without the header and is inflated here.
    if content[:2] == b"\x1f\x8b":
        try:
            content = gzip.decompress(content)
        except (EOFError, OSError, zlib.error) as exc:
            raise _Unreadable(f"corrupt or truncated gzip body ({exc.__class__.__name__})") from None
    try:
        payload = json.loads(content)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem = f"body is not valid JSON ({exc.__class__.__name__} at byte {getattr(exc, 'pos', '?')})"
    else:
        problem = ""
    if problem:  # raised out here: the JSON error holds the whole body, which may quote the request URL
        raise _Unreadable(problem)
    if not isinstance(payload, dict):
        raise _Unreadable(f"body is JSON {type(payload).__name__}, not the API's wrapper object")
    return payload


_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _drop_lone_surrogates(value: Any) -> tuple[Any, int]:
    """``value`` (decoded JSON) without lone UTF-16 surrogates, and how many it held.

    JSON may escape half of a surrogate pair alone ("\\ud83d"); json.loads joins a whole pair into one
    character and keeps a lone half, which no UTF-8 file can hold. The dump reader drops such
    characters too (the cleaner would remove them anyway)."""
    if isinstance(value, str):
        return _LONE_SURROGATE.subn("", value)
    if isinstance(value, list):
        pairs = [_drop_lone_surrogates(v) for v in value]
        return [v for v, _ in pairs], sum(n for _, n in pairs)
    if isinstance(value, dict):
        pairs = {k: _drop_lone_surrogates(v) for k, v in value.items()}
        return {k: v for k, (v, _) in pairs.items()}, sum(n for _, n in pairs.values())
    return value, 0


def _unescape(value: str | None) -> str | None:
    # A safe (unsafe=false) filter HTML-escapes plain strings such as titles and close reasons.
    return html.unescape(value) if value is not None else None


def _owner_id(item: dict[str, Any]) -> int | None:
    owner = item.get("owner") or {}
    return owner.get("user_id")  # a deleted user has a display name but no user_id


def answer_from_api_item(item: dict[str, Any]) -> RawAnswer:
    """One API ``answer`` object -> RawAnswer (the owner's name is dropped, only the id kept)."""
    return RawAnswer(
        answer_id=item["answer_id"],
        score=item.get("score", 0),
        is_accepted=bool(item.get("is_accepted", False)),
        body_html=item.get("body", ""),
        creation_date=item.get("creation_date"),
        owner_user_id=_owner_id(item),
        content_license=item.get("content_license"),
    )


def question_from_api_item(item: dict[str, Any], rank: int, *, keep_all_answers: bool = False) -> RawQuestion:
    """One API ``question`` object -> RawQuestion with its top answer picked.

    A default-filter item has no ``body``/``answers``: the body is then empty and there is no answer.
    """
    answers = [answer_from_api_item(a) for a in item.get("answers") or []]
    return RawQuestion(
        question_id=item["question_id"],
        rank=rank,
        title=_unescape(item.get("title", "")) or "",
        body_html=item.get("body", ""),
        score=item.get("score", 0),
        tags=[html.unescape(t) for t in item.get("tags") or []],
        creation_date=item.get("creation_date"),
        last_activity_date=item.get("last_activity_date"),
        closed_date=item.get("closed_date"),
        closed_reason=_unescape(item.get("closed_reason")),
        locked_date=item.get("locked_date"),
        community_owned_date=item.get("community_owned_date"),
        content_license=item.get("content_license"),
        link=item["link"],
        owner_user_id=_owner_id(item),
        answer_count=item.get("answer_count", len(answers)),
        accepted_answer_id=item.get("accepted_answer_id"),
        top_answer=pick_top_answer(answers),
        answers=answers if keep_all_answers else [],
    )


def _field_problem(exc: Exception) -> str:
    """What is wrong with an item, without echoing its values (a validation error repeats the input)."""
    if isinstance(exc, ValidationError):
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'item'}: {e['msg']}" for e in exc.errors())
    return f"{exc.__class__.__name__}: {exc}"


def _utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


class StackExchangeAPISource(QuestionSource):
    """Top questions of one site by votes, 100 per page, each with its highest-voted answer."""

    def __init__(
        self,
        site: str = "stats",
        base_url: str = DEFAULT_BASE_URL,
        key: str | None = None,
        access_token: str | None = None,
        page_size: int = 100,
        keep_all_answers: bool = False,
        max_retries: int = 5,
        clock: Clock | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
        requests_per_second: float = 10.0,
        on_page: Callable[[SourcePage], None] | None = None,
        label: str = "api",
    ):
        if not site or not isinstance(site, str):
            raise SourceConfigError(f"site {site!r} is not a Stack Exchange site name: use e.g. 'stats'")
        if not 1 <= page_size <= 100:
            raise SourceConfigError(f"page_size={page_size} is outside the API's 1..100; use 100 (the default)")
        if max_retries < 0:
            raise SourceConfigError(f"max_retries={max_retries} must be 0 or more")
        _check_base_url(base_url)
        self._site = site
        self.base_url = base_url.rstrip("/")
        # What messages and files show: httpx sends a user:password part as Basic auth, never shown.
        self.shown_url = _without_userinfo(self.base_url)
        self.page_size = page_size
        self.keep_all_answers = keep_all_answers
        self.max_retries = max_retries
        self.on_page = on_page
        self.label = label  # what describe() calls this source: "api", or e.g. "sample_site n=10000 seed=0"
        self._has_key = bool(key)
        self._secrets = [s for s in (key, access_token) if s]
        self.governor: RequestGovernor = governor_for(self.base_url, clock, requests_per_second)
        self.clock = self.governor.clock
        self._rng = random.Random()
        self._filter: str | None = None
        self._quota_resume_at: float | None = None
        self._quota_reason = ""
        self.quota_remaining: int | None = None
        self.quota_max: int | None = None
        self.requests = 0
        #: Lone UTF-16 surrogates (a JSON escape of half a pair) dropped from responses: UTF-8 cannot hold them.
        self.lone_surrogates_dropped = 0
        credentials = {k: v for k, v in (("key", key), ("access_token", access_token)) if v}
        _install_httpx_log_filter()
        if transport is None:
            try:
                transport = httpx.HTTPTransport(proxy=proxy_for(self.base_url))
            except (ValueError, ImportError, httpx.InvalidURL) as exc:  # the value is not shown: it may hold a password
                raise SourceError(
                    f"the proxy that HTTPS_PROXY, HTTP_PROXY or ALL_PROXY names for {self.shown_url} cannot be used "
                    f"({type(exc).__name__}); set it to http://host:port, or name the host in NO_PROXY"
                ) from None
        self._client = httpx.Client(
            base_url=self.base_url,
            transport=_CredentialTransport(transport, credentials),
            timeout=timeout,
            headers={"Accept-Encoding": "gzip", "User-Agent": "cv_pipeline (Cross Validated dataset builder)"},
        )

    # -- QuestionSource -------------------------------------------------------------------------
    def site(self) -> str:
        return self._site

    def describe(self) -> str:
        parts = urlsplit(self.shown_url)
        host = parts.hostname or ""
        if host in ("127.0.0.1", "localhost", "::1"):
            # A local sample site's port changes from run to run; keeping it would make two
            # collections of the same data differ.
            parts = parts._replace(netloc=host)
        # No word about credentials: the same data fetched with or without a key is the same batch.
        return f"{self.label} {urlunsplit(parts)} site={self._site}"

    def __repr__(self) -> str:
        return f"StackExchangeAPISource({self.describe()!r})"

    def close(self) -> None:
        self._client.close()

    @contextlib.contextmanager
    def _errors_redacted(self) -> Iterator[None]:
        """Every error leaving the client without the secrets, whatever the server echoed into it (an error_name,
        an item, a page quoting the request URL): exceptions end up in Dagster's event log and run storage."""
        try:
            yield
        except SourceError as exc:
            exc.args = tuple(self._redact(a) if isinstance(a, str) else a for a in exc.args)
            if exc.__suppress_context__:
                exc.__context__ = None  # a suppressed JSON error still holds the whole body it failed on
            raise

    def fetch_page(self, page: int) -> SourcePage:
        with self._errors_redacted():
            return self._fetch_page(page)

    def _fetch_page(self, page: int) -> SourcePage:
        if page < 1:
            raise ValueError(f"page={page}: pages are numbered from 1")
        before = self.requests
        params = {
            "site": self._site,
            "sort": "votes",
            "order": "desc",
            "page": page,
            "pagesize": self.page_size,
            "filter": self.filter_id(),
        }
        payload = self._get("questions", params)
        items = payload.get("items")
        if not isinstance(items, list):
            raise SourceError(f"GET /questions page {page}: the response has no 'items' list; check base_url {self.shown_url!r}")
        offset = (page - 1) * self.page_size
        try:
            questions = [
                question_from_api_item(item, offset + i, keep_all_answers=self.keep_all_answers)
                for i, item in enumerate(items)
            ]
        except (KeyError, TypeError, ValueError) as exc:
            raise SourceError(
                f"GET /questions page {page}: an item lacks a required field ({_field_problem(exc)}); "
                "the filter must include question_id, link and answer_id"
            ) from None
        result = SourcePage(
            page=page,
            page_size=self.page_size,
            questions=questions,
            has_more=bool(payload.get("has_more", False)),
            quota_remaining=self.quota_remaining,
            quota_max=self.quota_max,
            requests=self.requests - before,
        )
        log.info(
            "page %d: %d questions, has_more=%s, quota %s/%s, %d request(s)",
            page, len(questions), result.has_more, self.quota_remaining, self.quota_max, result.requests,
        )
        if self.on_page is not None:
            self.on_page(result)
        return result

    # -- the filter -----------------------------------------------------------------------------
    def filter_id(self) -> str:
        """The custom filter's id, created on first use and cached on this client."""
        with self._errors_redacted():
            return self._filter_id()

    def _filter_id(self) -> str:
        if self._filter is None:
            payload = self._get(
                "filters/create",
                {"include": ";".join(FILTER_INCLUDE), "exclude": ";".join(FILTER_EXCLUDE), "base": "default", "unsafe": "false"},
            )
            try:
                self._filter = str(payload["items"][0]["filter"])
            except (KeyError, IndexError, TypeError):
                raise SourceError(
                    f"GET /filters/create at {self.shown_url} returned no filter; "
                    "check that base_url points at the Stack Exchange API 2.3"
                ) from None
            log.info("created API filter %s", self._filter)
        return self._filter

    # -- one call, with pacing, retries and error mapping ----------------------------------------
    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return redact_url_secrets(text)

    def _get(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        path = f"/{method}"
        if self._quota_resume_at is not None and self.clock.now() < self._quota_resume_at:
            raise self._quota_error(path, self._quota_resume_at, self._quota_reason)
        problem = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(60.0, 2.0 ** (attempt - 1)) * (1.0 + self._rng.random() * 0.5)
                log.warning("GET %s: %s; retry %d/%d in %.1fs", path, self._redact(problem), attempt, self.max_retries, delay)
                self.clock.sleep(delay)
            self.governor.wait_turn(method)
            self.requests += 1
            log.debug("GET %s %s", path, {k: v for k, v in params.items() if k != "include"})
            try:
                response = self._client.get(path, params=params)
            except httpx.HTTPError as exc:  # timeouts, dropped connections, bad gzip stream
                problem = self._redact(f"{exc.__class__.__name__}: {exc}".rstrip(": "))
                continue
            try:
                payload = _decode_body(response.content)
                # A surrogate can only come from a JSON escape ("\\ud83d"): a cheap test spares the walk.
                if b"\\ud" in response.content or b"\\uD" in response.content or response.content[:2] == b"\x1f\x8b":
                    payload, dropped = _drop_lone_surrogates(payload)
                    self.lone_surrogates_dropped += dropped
            except _Unreadable as exc:
                # A cut-off or garbled API body (gzip or JSON) is a glitch worth retrying, whatever
                # the status; a 4xx page that is not even trying to be JSON means a wrong base_url.
                looks_like_api = response.content[:2] == b"\x1f\x8b" or response.content.lstrip()[:1] == b"{"
                if looks_like_api or response.status_code >= 500 or response.status_code in (200, 429):
                    problem = f"HTTP {response.status_code}, {exc}"
                    continue
                raise SourceError(
                    f"GET {path}: HTTP {response.status_code} without an API error body ({exc}); "
                    f"check that base_url {self.shown_url!r} is the Stack Exchange API 2.3"
                ) from None
            self._note_wrapper(method, payload)
            error_id = payload.get("error_id")
            if error_id is None and response.status_code < 400:
                self._check_quota_left(path)
                return payload
            if error_id is None:
                problem = f"HTTP {response.status_code} with no error_id"
                if response.status_code >= 500 or response.status_code == 429:
                    continue
                raise SourceError(f"GET {path}: HTTP {response.status_code} with no API error id; check base_url {self.shown_url!r}")
            message = self._redact(str(payload.get("error_message", "")))
            name = str(payload.get("error_name", ""))
            if error_id == 502 and (found := _QUOTA_MESSAGE.search(message)):
                wait = int(found.group(1))
                if wait > MAX_THROTTLE_WAIT_S:
                    # Hours away: the daily quota is spent, not a short burst throttle.
                    self._quota_resume_at = self.clock.now() + wait
                    self._quota_reason = f"the API said: {message}"
                    raise self._quota_error(path, self._quota_resume_at, self._quota_reason)
                # A short wait is a burst throttle: hold this method for that long, then retry.
                self.governor.note_backoff(method, wait)
            if error_id in RETRYABLE_ERROR_IDS:
                problem = f"error {error_id} {name}: {message}"
                continue
            raise SourceError(f"GET {path}: {self._explain(error_id, name, message, params)}")
        raise TransientSourceError(
            f"GET {path} failed {self.max_retries + 1} times, last: {problem}; the API at {self.shown_url} "
            "is unavailable or throttling: wait a few minutes and re-run (finished pages are kept)"
        )

    def _note_wrapper(self, method: str, payload: dict[str, Any]) -> None:
        backoff = payload.get("backoff")
        if isinstance(backoff, (int, float)) and backoff > 0:
            log.info("the API asked for a %ss backoff on %s", backoff, method)
            self.governor.note_backoff(method, float(backoff))
        if isinstance(payload.get("quota_remaining"), int):
            self.quota_remaining = payload["quota_remaining"]
        if isinstance(payload.get("quota_max"), int):
            self.quota_max = payload["quota_max"]

    def _check_quota_left(self, path: str) -> None:
        if self.quota_remaining == 0:
            # The quota is a rolling 24 h window that started with its first request, which we
            # cannot see: 24 h from now is the latest it can reset. The next call raises.
            self._quota_resume_at = self.clock.now() + _DAY
            self._quota_reason = "quota_remaining reached 0; the rolling 24 h window refills by then at the latest"
            log.warning("GET %s spent the last request of the daily quota", path)

    def _quota_error(self, path: str, resume_at: float, why: str) -> QuotaExhausted:
        hint = "" if self._has_key else "; an app key (STACKEXCHANGE_KEY) raises the quota from 300 to 10,000 requests/day"
        return QuotaExhausted(
            f"GET {path}: the daily request quota ({self.quota_max or '?'} requests) is spent ({why}); "
            f"resume at {_utc(resume_at)} — finished pages are kept, a re-run fetches only the rest{hint}",
            resume_at=resume_at,
        )

    def _explain(self, error_id: int, name: str, message: str, params: dict[str, Any]) -> str:
        said = f"(API error {error_id} {name}: {message})"
        low = message.lower()
        if error_id == 400:
            if "page" in low and "pagesize" not in low and "key" in low:
                return f"page {params.get('page')} needs an app key: set STACKEXCHANGE_KEY {said}"
            if "site" in low:
                return f"site {self._site!r} is not a Stack Exchange site: use e.g. 'stats' {said}"
            if "access_token" in low:
                return f"the access token was rejected: check STACKEXCHANGE_ACCESS_TOKEN or drop it {said}"
            if "key" in low:
                return f"the API key was rejected: check STACKEXCHANGE_KEY, or run without a key {said}"
            if "filter" in low:
                return f"the API rejected filter {params.get('filter')!r}: re-run to create a fresh one {said}"
            return f"the API rejected a parameter {said}; check site {self._site!r} and page_size {self.page_size}"
        fixes = {
            401: "this call needs an access token: set STACKEXCHANGE_ACCESS_TOKEN",
            402: "the access token is invalid or expired: renew STACKEXCHANGE_ACCESS_TOKEN or drop it",
            403: "the access token lacks the scope this call needs: renew it with the right scope or drop it",
            404: f"this is not an API 2.3 method: check base_url {self.shown_url!r} (it must end in /2.3)",
            405: "an access token needs an app key too: set STACKEXCHANGE_KEY",
            406: "the access token leaked and was revoked by Stack Exchange: create a new one",
        }
        return f"{fixes.get(error_id, 'the API refused the request; read its message and fix the input')} {said}"
