"""A Stack Exchange API 2.3-compatible HTTP server on 127.0.0.1 over a :class:`SampleCorpus`.

Same wrapper, paging, filters, ``backoff``, per-key daily quota, gzip and error bodies as the
real API, plus fault switches (:class:`Faults`) so the client's retry paths run for real.
Only loopback is ever bound: the site is a test double, not a service.
"""

from __future__ import annotations

import argparse
import gzip
import html
import json
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field, fields
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from cv_pipeline.sources.sample_site import filters as F
from cv_pipeline.sources.sample_site.corpus import SITE_URL, SampleCorpus

API_VERSION = "2.3"
HOST = "127.0.0.1"
SITE_NAMES = frozenset({"stats", "stats.stackexchange.com", "stats.stackexchange"})
MAX_PAGESIZE = 100
MAX_IDS = 100
_SECRET_PARAMS = ("key", "access_token")

ERROR_NAMES = {
    400: "bad_parameter", 401: "access_token_required", 402: "invalid_access_token", 403: "access_denied",
    404: "no_method", 405: "key_required", 406: "access_token_compromised", 500: "internal_error",
    502: "throttle_violation", 503: "temporarily_unavailable",
}


class ApiError(Exception):
    """An error the API reports in its JSON body (always HTTP 400, like the real API)."""

    def __init__(self, error_id: int, message: str, backoff: int | None = None):
        super().__init__(message)
        self.error_id = error_id
        self.message = message
        self.backoff = backoff

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error_id": self.error_id, "error_name": ERROR_NAMES[self.error_id], "error_message": self.message}
        if self.backoff is not None:
            out["backoff"] = self.backoff
        return out


@dataclass
class Faults:
    """Switches that make the next requests fail in the documented ways; change them at any time.

    ``*_next`` counters are consumed one per request (drop, then throttle, unavailable, fail, then
    malformed/truncate on the response that goes out). Use :meth:`update` to change several at once.
    """

    throttle_next: int = 0  # -> 502 throttle_violation
    throttle_backoff: int | None = None  # adds "backoff" to those throttle errors
    unavailable_next: int = 0  # -> 503 temporarily_unavailable
    fail_next: int = 0  # -> the error in fail_error_id (e.g. 403 access_denied)
    fail_error_id: int = 403
    slow_seconds: float = 0.0  # sleep before answering every request
    truncate_next: int = 0  # gzip body cut in half (Content-Length matches the cut body)
    malformed_next: int = 0  # valid gzip of invalid JSON
    drop_next: int = 0  # close the connection without any response
    no_content_encoding: bool = False  # gzip body without the Content-Encoding header
    backoff_every: int = 0  # every k-th successful response carries "backoff": backoff_seconds
    backoff_seconds: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "_lock":
            if name not in {f.name for f in fields(self)}:
                raise AttributeError(f"Faults has no switch {name!r}")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
                raise ValueError(f"Faults.{name}={value!r}: switches must be >= 0")
            if name == "fail_error_id" and value not in ERROR_NAMES:
                raise ValueError(f"Faults.fail_error_id={value!r}: use one of {sorted(ERROR_NAMES)}")
        object.__setattr__(self, name, value)

    def update(self, **changes: Any) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self, name, value)

    def take(self, name: str) -> bool:
        """Consume one unit of counter ``name``; True when the fault applies to this request."""
        with self._lock:
            left = getattr(self, name)
            if left > 0:
                setattr(self, name, left - 1)
                return True
            return False


def _seconds_to_utc_midnight(now: float) -> int:
    return max(1, math.ceil(86_400 - now % 86_400))


def _redact(params: dict[str, str]) -> dict[str, str]:
    return {k: ("REDACTED" if k in _SECRET_PARAMS else v) for k, v in params.items()}


def _int_param(params: dict[str, str], name: str, default: int) -> int:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer") from None


class SampleSite:
    """Serve ``n_questions`` generated questions like api.stackexchange.com, on 127.0.0.1.

    >>> with SampleSite(n_questions=500) as site:
    ...     url = site.base_url  # "http://127.0.0.1:<port>/2.3"
    """

    def __init__(
        self,
        n_questions: int = 12_000,
        seed: int = 0,
        *,
        quota_max: int = 10_000,
        anonymous_quota_max: int | None = None,
        valid_keys: Collection[str] | None = None,
        valid_access_tokens: Collection[str] | None = None,
        faults: Faults | None = None,
        enforce_backoff: bool = True,
        max_requests_per_second: float | None = None,
        port: int = 0,
        clock: Callable[[], float] = time.time,
    ):
        if quota_max < 1:
            raise ValueError(f"quota_max={quota_max!r}: must be at least 1")
        self.corpus = SampleCorpus(n_questions, seed)
        self.quota_max = quota_max
        # The real API gives 300/day without a key; default to the keyed quota so a demo
        # without a key can still read a whole corpus.
        self.anonymous_quota_max = anonymous_quota_max or quota_max
        self.valid_keys = frozenset(valid_keys) if valid_keys is not None else None
        self.valid_access_tokens = frozenset(valid_access_tokens) if valid_access_tokens is not None else None
        self.faults = faults or Faults()
        self.enforce_backoff = enforce_backoff
        self.max_requests_per_second = max_requests_per_second
        self.clock = clock
        self._port = port
        self._lock = threading.Lock()
        self._quota: dict[str, tuple[int, int]] = {}  # bucket -> (utc day, remaining)
        self._backoff_until: dict[str, float] = {}  # method -> clock time
        self._recent: deque[float] = deque()
        self._successes = 0
        self._info: dict[str, Any] | None = None
        self._log: list[tuple[str, dict[str, str]]] = []
        self.requests = 0
        self.backoff_violations = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> SampleSite:
        if self._server is not None:
            return self
        handler = type("SampleSiteHandler", (_Handler,), {"site": self})
        self._server = ThreadingHTTPServer((HOST, self._port), handler)
        self._server.daemon_threads = True
        # A short poll interval so stop() (which waits for the loop to notice) is quick.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), name="sample-site", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> SampleSite:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def address(self) -> tuple[str, int]:
        if self._server is None:
            raise RuntimeError("the sample site is not running: use it as a context manager or call start()")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def base_url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}/{API_VERSION}"

    # -- counters -------------------------------------------------------------------------
    @property
    def request_log(self) -> list[tuple[str, dict[str, str]]]:
        """(path, params) of every request, key and access_token replaced by 'REDACTED'."""
        with self._lock:
            return list(self._log)

    def quota_remaining(self, key: str | None = None) -> int:
        with self._lock:
            return self._bucket(key or "")[1]

    def reset_quota(self) -> None:
        with self._lock:
            self._quota.clear()

    def _bucket(self, bucket: str) -> tuple[int, int]:
        day = int(self.clock() // 86_400)
        entry = self._quota.get(bucket)
        if entry is None or entry[0] != day:  # a new UTC day refills every quota
            entry = (day, self.quota_max if bucket else self.anonymous_quota_max)
            self._quota[bucket] = entry
        return entry

    # -- request pipeline (called by the handler) ----------------------------------------
    def _admit(self, method: str, params: dict[str, str]) -> tuple[int, int]:
        """Auth, rate, backoff and quota checks; returns (quota_max, quota_remaining)."""
        key, token = params.get("key"), params.get("access_token")
        if key is not None and self.valid_keys is not None and key not in self.valid_keys:
            raise ApiError(400, "key is not valid")  # never echo the key
        if token is not None:
            if not key:
                raise ApiError(405, "an access_token requires a key")
            if self.valid_access_tokens is not None and token not in self.valid_access_tokens:
                raise ApiError(402, "access_token is not valid")
        with self._lock:
            now = self.clock()
            if self.max_requests_per_second is not None:
                while self._recent and self._recent[0] <= now - 1:
                    self._recent.popleft()
                if len(self._recent) >= self.max_requests_per_second:
                    raise ApiError(502, "too many requests from this IP, more requests available in 1 seconds")
                self._recent.append(now)
            if self.enforce_backoff and now < self._backoff_until.get(method, 0):
                self.backoff_violations += 1
                raise ApiError(502, "Violation of backoff parameter")
            bucket = key or ""
            day, remaining = self._bucket(bucket)
            if remaining <= 0:
                raise ApiError(
                    502, f"too many requests from this IP, more requests available in {_seconds_to_utc_midnight(now)} seconds"
                )
            self._quota[bucket] = (day, remaining - 1)
            return (self.quota_max if bucket else self.anonymous_quota_max), remaining - 1

    def _note_backoff(self, method: str, seconds: int) -> None:
        with self._lock:
            self._backoff_until[method] = max(self._backoff_until.get(method, 0), self.clock() + seconds)

    def _next_backoff(self) -> int | None:
        with self._lock:
            self._successes += 1
            every = self.faults.backoff_every
            if every and self._successes % every == 0:
                return self.faults.backoff_seconds
            return None

    def _check_site(self, params: dict[str, str]) -> None:
        site = params.get("site")
        if not site:
            raise ApiError(400, "site is required")
        if site.lower() not in SITE_NAMES:
            raise ApiError(400, f"No site found for name `{site[:100]}`")

    def _filter(self, params: dict[str, str]) -> F.Filter:
        try:
            return F.decode(params.get("filter") or "default")
        except F.FilterError as e:
            raise ApiError(400, str(e)) from None

    # -- methods --------------------------------------------------------------------------
    def _questions(self, params: dict[str, str], ids: str | None) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        self._check_site(params)
        sort = params.get("sort")
        allowed_sorts = {"votes"} if ids is None else {"votes", None}  # by-id lookups may omit sort
        if sort not in allowed_sorts:
            raise ApiError(400, f"sort `{str(sort)[:32]}` is not served by the sample site; pass sort=votes")
        order = params.get("order", "desc")
        if order not in ("desc", "asc"):
            raise ApiError(400, "order must be desc or asc")
        page = _int_param(params, "page", 1)
        pagesize = _int_param(params, "pagesize", 30)
        if page < 1:
            raise ApiError(400, "page must be at least 1")
        if not 0 <= pagesize <= MAX_PAGESIZE:
            raise ApiError(400, f"pagesize must be between 0 and {MAX_PAGESIZE}")
        flt = self._filter(params)
        n = len(self.corpus)
        if ids is None:
            total = n
            start, stop = min((page - 1) * pagesize, n), min(page * pagesize, n)
            ranks = [r if order == "desc" else n - 1 - r for r in range(start, stop)]
        else:
            ranks_all = sorted({r for r in (self._rank_of(s) for s in ids.split(";")) if r is not None},
                               reverse=order == "asc")
            total = len(ranks_all)
            ranks = ranks_all[(page - 1) * pagesize: page * pagesize]
        items = [_project_question(self.corpus.question(r), flt) for r in ranks]
        extra = {"page": page, "page_size": pagesize, "total": total, "type": "question"}
        return items, page * pagesize < total, extra

    def _rank_of(self, raw: str) -> int | None:
        try:
            qid = int(raw)
        except ValueError:
            raise ApiError(400, "ids must be integers separated by ';'") from None
        return self.corpus.rank_of(qid)

    def _site_info(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        self._check_site(params)
        info = self._info
        if info is None:
            # Exact totals from the cheap per-thread shapes (no text is generated). Computed
            # outside the lock: two racing first calls just compute the same numbers twice.
            shapes = [self.corpus.shape(r) for r in range(len(self.corpus))]
            info = self._info = {
                "new_active_users": 0,
                "total_users": len(self.corpus) * 3,
                "badges_per_minute": 0.0,
                "total_badges": 0,
                "total_votes": sum(self.corpus.score(r) for r in range(len(self.corpus))),
                "total_comments": 0,
                "answers_per_minute": 0.0,
                "questions_per_minute": 0.0,
                "total_answers": sum(len(s.answer_scores) for s in shapes),
                "total_accepted": sum(s.accepted is not None for s in shapes),
                "total_unanswered": sum(not s.answer_scores for s in shapes),
                "total_questions": len(self.corpus),
                "api_revision": "sample-site",
            }
        return [dict(info)], False, {"total": 1, "type": "info", "page": 1, "page_size": 1}

    def _filters_create(self, params: dict[str, str]) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        unsafe = params.get("unsafe", "false").lower()
        if unsafe not in ("true", "false"):
            raise ApiError(400, "unsafe must be true or false")
        try:
            flt = F.create(params.get("include", ""), params.get("exclude", ""), params.get("base", "default"), unsafe == "true")
        except F.FilterError as e:
            raise ApiError(400, str(e)) from None
        return [_describe_filter(flt)], False, {"total": 1, "type": "filter", "page": 1, "page_size": 1}

    def _filters_read(self, names: str) -> tuple[list[dict[str, Any]], bool, dict[str, Any]]:
        try:
            items = [_describe_filter(F.decode(name), name) for name in names.split(";") if name]
        except F.FilterError as e:
            raise ApiError(400, str(e)) from None
        return items, False, {"total": len(items), "type": "filter", "page": 1, "page_size": len(items)}

    def _route(self, path: str) -> tuple[str, Callable[[dict[str, str]], tuple[list[dict[str, Any]], bool, dict[str, Any]]]]:
        prefix = f"/{API_VERSION}/"
        parts = path[len(prefix):].strip("/").split("/") if path.startswith(prefix) else []
        if parts == ["questions"]:
            return "questions", lambda p: self._questions(p, None)
        if len(parts) == 2 and parts[0] == "questions" and parts[1]:
            if len(parts[1].split(";")) > MAX_IDS:
                raise ApiError(400, f"at most {MAX_IDS} ids per request")
            return "questions/{ids}", lambda p: self._questions(p, parts[1])
        if parts == ["info"]:
            return "info", self._site_info
        if parts == ["filters", "create"]:
            return "filters/create", self._filters_create
        if len(parts) == 2 and parts[0] == "filters":
            return "filters/{filters}", lambda p: self._filters_read(parts[1])
        raise ApiError(404, "no method found with this name")

    def handle(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """One request, faults that change the answer included; returns the JSON body."""
        try:
            method, run = self._route(path)
        except ApiError as e:
            return e.body()
        if self.faults.take("throttle_next"):
            backoff = self.faults.throttle_backoff
            if backoff:
                self._note_backoff(method, backoff)
            return ApiError(502, "too many requests from this IP, more requests available in 60 seconds", backoff).body()
        if self.faults.take("unavailable_next"):
            return ApiError(503, "The API is temporarily unavailable; try again later").body()
        if self.faults.take("fail_next"):
            return ApiError(self.faults.fail_error_id, "injected failure").body()
        try:
            quota_max, quota_remaining = self._admit(method, params)
            items, has_more, extra = run(params)
            flt = F.decode("default") if method.startswith("filters") else self._filter(params)
        except ApiError as e:
            return e.body()
        wrapper: dict[str, Any] = {"items": items, "has_more": has_more, "quota_max": quota_max, "quota_remaining": quota_remaining}
        backoff = self._next_backoff()
        if backoff:
            wrapper["backoff"] = backoff
            self._note_backoff(method, backoff)
        wrapper.update(extra)
        return {k: v for k, v in wrapper.items() if flt.has("." + k)}


def _describe_filter(flt: F.Filter, name: str | None = None) -> dict[str, Any]:
    return {
        "included_fields": sorted(flt.fields),
        "filter_type": "unsafe" if flt.unsafe else "safe",
        "filter": name or F.encode(flt),
    }


def _escape(text: str) -> str:
    # The API's safe filters escape plain strings this way (apostrophe as &#39;).
    return html.escape(text, quote=True).replace("&#x27;", "&#39;")


def _project_user(owner: dict[str, Any], flt: F.Filter) -> dict[str, Any]:
    out = {k: v for k, v in owner.items() if flt.has(f"shallow_user.{k}")}
    if "display_name" in out and not flt.unsafe:
        out["display_name"] = _escape(out["display_name"])
    return out


def _project_question(q: dict[str, Any], flt: F.Filter) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in q.items():
        if not flt.has(f"question.{k}"):
            continue
        if k in ("title", "closed_reason") and not flt.unsafe:
            v = _escape(v)
        elif k == "owner":
            v = _project_user(v, flt)
        elif k == "answers":
            if not v:
                continue  # the real API omits an empty answers list
            v = [_project_answer(a, flt) for a in v]
        out[k] = v
    return out


def _project_answer(a: dict[str, Any], flt: F.Filter) -> dict[str, Any]:
    full = dict(a, link=f"{SITE_URL}/a/{a['answer_id']}")
    out = {k: v for k, v in full.items() if flt.has(f"answer.{k}")}
    if "owner" in out:
        out["owner"] = _project_user(out["owner"], flt)
    return out


class _Handler(BaseHTTPRequestHandler):
    site: SampleSite
    protocol_version = "HTTP/1.1"  # keep-alive, so a paging client reuses its connection
    server_version = "cv-pipeline-sample-site"

    def log_message(self, format: str, *args: Any) -> None:
        """Silent: the default logger would print URLs, and URLs can carry a key."""

    def do_GET(self) -> None:
        site = self.site
        split = urlsplit(self.path)
        params = dict(parse_qsl(split.query, keep_blank_values=True))
        with site._lock:
            site.requests += 1
            site._log.append((split.path, _redact(params)))
        faults = site.faults
        if faults.take("drop_next"):
            self.close_connection = True  # no status line, no body: the client sees a dropped connection
            return
        if faults.slow_seconds:
            time.sleep(faults.slow_seconds)
        answer = site.handle(split.path, params)
        payload = json.dumps(answer, ensure_ascii=False, separators=(",", ":")).encode()
        if faults.take("malformed_next"):
            payload = payload[: max(1, len(payload) // 2)] + b"<!-- not json"
        body = gzip.compress(payload, compresslevel=6, mtime=0)  # mtime=0: same request, same bytes
        if faults.take("truncate_next"):
            body = body[: len(body) // 2]
        self.send_response(400 if b'"error_id"' in payload[:80] else 200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        if not faults.no_content_encoding:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Access-Control-Allow-Origin", "*")
        self.end_headers()
        self.wfile.write(body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m cv_pipeline.sources.sample_site",
                                     description="Serve the generated Cross-Validated-like corpus on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (0 picks a free one)")
    parser.add_argument("--questions", type=int, default=40_000, help="corpus size")
    parser.add_argument("--seed", type=int, default=0, help="corpus seed")
    parser.add_argument("--quota-max", type=int, default=10_000, help="daily requests per key")
    parser.add_argument("--backoff-every", type=int, default=0, help="add backoff to every k-th response")
    parser.add_argument("--backoff-seconds", type=int, default=0, help="the backoff value to send")
    parser.add_argument("--no-content-encoding", action="store_true", help="gzip bodies without the header")
    args = parser.parse_args(argv)
    faults = Faults(backoff_every=args.backoff_every, backoff_seconds=args.backoff_seconds,
                    no_content_encoding=args.no_content_encoding)
    # SIGTERM stops the server cleanly, whatever disposition the process inherited: a parent that ignores
    # it (as Dagster's in-process runs make a background job do) would otherwise leave the server unstoppable.
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    with SampleSite(args.questions, args.seed, quota_max=args.quota_max, faults=faults, port=args.port) as site:
        print(f"sample site serving {args.questions:,} questions at {site.base_url} (Ctrl-C stops)", flush=True)
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
