"""The Stack Exchange API client against an in-process fake API (httpx.MockTransport) on a fake clock."""

from __future__ import annotations

import gzip
import html
import http.server
import json
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from cv_pipeline.sources.api import (
    FILTER_INCLUDE,
    StackExchangeAPISource,
    answer_from_api_item,
    proxy_for,
    question_from_api_item,
    redact_url_secrets,
)
from cv_pipeline.sources.base import QuotaExhausted, SourceError
from cv_pipeline.sources.ratelimit import FakeClock, RequestGovernor, governor_for
from cv_pipeline.sources.sample_site import Faults, SampleSite

BASE = "https://api.example.test/2.3"
KEY = "k3y-SeCrEt-((value))"
TOKEN = "t0ken-SeCrEt-value"


def gz(obj: Any) -> bytes:
    return gzip.compress(json.dumps(obj).encode())


def respond(payload: Any, status: int = 200, *, header: bool = True, body: bytes | None = None) -> httpx.Response:
    """A gzip'd API response; ``header=False`` leaves out Content-Encoding as some proxies do."""
    headers = {"Content-Type": "application/json; charset=utf-8"}
    if header:
        headers["Content-Encoding"] = "gzip"
    return httpx.Response(status, headers=headers, stream=httpx.ByteStream(body if body is not None else gz(payload)))


def wrapper(items: list[dict], *, has_more: bool = False, quota_remaining: int = 9_000, backoff: int | None = None) -> dict:
    out: dict[str, Any] = {"items": items, "has_more": has_more, "quota_max": 10_000, "quota_remaining": quota_remaining}
    if backoff is not None:
        out["backoff"] = backoff
    return out


def api_error(error_id: int, name: str, message: str, backoff: int | None = None) -> httpx.Response:
    body: dict[str, Any] = {"error_id": error_id, "error_name": name, "error_message": message}
    if backoff is not None:
        body["backoff"] = backoff
    return respond(body, status=400)


def answer(aid: int, score: int, accepted: bool = False, user_id: int | None = 7) -> dict:
    owner = {"display_name": "Ann Onymous", "user_id": user_id} if user_id else {"display_name": "Gone User", "user_type": "does_not_exist"}
    return {"answer_id": aid, "score": score, "is_accepted": accepted, "body": f"<p>answer {aid}</p>",
            "creation_date": 1_300_000_000 + aid, "owner": owner, "content_license": "CC BY-SA 3.0"}


def question(i: int, answers: list[dict] | None = None, **extra: Any) -> dict:
    item = {"question_id": 1000 + i, "score": 500 - i, "title": f"Q{i}: mean &amp; &quot;median&quot; &lt;3",
            "body": f"<p>body {i}</p>", "tags": ["mean", "median"], "link": f"https://stats.stackexchange.com/questions/{1000 + i}/q",
            "creation_date": 1_280_000_000 + i, "last_activity_date": 1_600_000_000, "content_license": "CC BY-SA 2.5",
            "owner": {"display_name": "Quentin Asker", "user_id": 42, "link": "https://stats.stackexchange.com/users/42/quentin"},
            "answer_count": len(answers or []), "answers": answers or []}
    item.update(extra)
    return item


class FakeAPI:
    """Serves /filters/create and /questions; ``script[method]`` holds responses (or exceptions) to serve first."""

    def __init__(self, n_questions: int = 250, clock: FakeClock | None = None):
        self.items = [question(i, [answer(10_000 + i, 3)]) for i in range(n_questions)]
        self.clock = clock
        self.requests: list[httpx.Request] = []
        self.times: list[tuple[str, float]] = []
        self.script: dict[str, list[httpx.Response | Exception | Callable[[], httpx.Response]]] = defaultdict(list)
        self.quota_remaining = 9_000

    def calls(self, method: str) -> int:
        return sum(1 for r in self.requests if r.url.path == f"/2.3/{method}")

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        method = request.url.path.removeprefix("/2.3/")
        if self.clock is not None:
            self.times.append((method, self.clock.now()))
        if self.script[method]:
            step = self.script[method].pop(0)
            if isinstance(step, Exception):
                raise step
            return step() if callable(step) else step
        if method == "filters/create":
            return respond(wrapper([{"filter": "!cvFilter(*)", "filter_type": "safe"}]))
        if method == "questions":
            page, size = int(request.url.params["page"]), int(request.url.params["pagesize"])
            chunk = self.items[(page - 1) * size : page * size]
            return respond(wrapper(chunk, has_more=page * size < len(self.items), quota_remaining=self.quota_remaining))
        return api_error(404, "no_method", "no method found with this name")


def make_source(api: FakeAPI, clock: FakeClock, **kwargs: Any) -> StackExchangeAPISource:
    kwargs.setdefault("base_url", BASE)
    return StackExchangeAPISource(clock=clock, transport=httpx.MockTransport(api), **kwargs)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# -- paging and mapping ----------------------------------------------------------------------------


def test_pages_rank_questions_and_create_the_filter_once(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=250)
    with make_source(api, clock) as source:
        pages = [source.fetch_page(p) for p in (1, 2, 3)]
    assert [len(p.questions) for p in pages] == [100, 100, 50]
    assert [p.has_more for p in pages] == [True, True, False]
    assert [q.rank for q in pages[1].questions[:2]] == [100, 101]
    assert pages[2].questions[-1].rank == 249 and pages[2].questions[-1].question_id == 1249
    assert api.calls("filters/create") == 1
    assert [p.requests for p in pages] == [2, 1, 1]  # the filter is paid for by page 1
    params = api.requests[-1].url.params
    assert (params["site"], params["sort"], params["order"], params["page"], params["pagesize"], params["filter"]) == (
        "stats", "votes", "desc", "3", "100", "!cvFilter(*)")
    assert "key" not in params and "access_token" not in params
    assert pages[0].quota_remaining == 9_000 and pages[0].quota_max == 10_000


def test_filter_embeds_bodies_and_answers_and_is_safe(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=1)
    with make_source(api, clock) as source:
        source.fetch_page(1)
    params = api.requests[0].url.params
    include = params["include"].split(";")
    for field in ("question.body", "question.answers", "answer.body", "question.closed_date", "question.content_license",
                  "answer.is_accepted", "question.accepted_answer_id", "shallow_user.user_id"):
        assert field in include
    assert "shallow_user.display_name" in params["exclude"].split(";")
    assert (params["base"], params["unsafe"]) == ("default", "false")
    assert set(FILTER_INCLUDE) == set(include)


@pytest.mark.parametrize(
    ("answers", "accepted_answer_id", "expected_top"),
    [
        ([answer(1, 5), answer(2, 9), answer(3, 9, accepted=True)], 3, 3),  # tie on score: the accepted one
        ([answer(1, 12), answer(2, 4, accepted=True)], 2, 1),  # top by votes beats accepted
        ([answer(8, 4), answer(5, 4)], None, 5),  # tie, none accepted: the oldest (lowest id)
        ([], None, None),
    ],
)
def test_top_answer_selection(clock: FakeClock, answers: list[dict], accepted_answer_id: int | None, expected_top: int | None) -> None:
    api = FakeAPI(n_questions=0)
    api.items = [question(0, answers, accepted_answer_id=accepted_answer_id)]
    with make_source(api, clock) as source:
        q = source.fetch_page(1).questions[0]
    assert (q.top_answer.answer_id if q.top_answer else None) == expected_top
    assert q.accepted_answer_id == accepted_answer_id
    assert q.answers == []  # only the top answer unless asked


def test_keep_all_answers_and_mapping_details(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=0)
    api.items = [question(0, [answer(1, 2), answer(2, 1, user_id=None)], closed_date=1_290_000_000,
                          closed_reason="Needs more focus &amp; detail", locked_date=1_295_000_000, community_owned_date=1_291_000_000)]
    with make_source(api, clock, keep_all_answers=True) as source:
        q = source.fetch_page(1).questions[0]
    assert q.title == 'Q0: mean & "median" <3'
    assert q.closed_reason == "Needs more focus & detail"
    assert (q.closed_date, q.locked_date, q.community_owned_date) == (1_290_000_000, 1_295_000_000, 1_291_000_000)
    assert q.owner_user_id == 42 and q.content_license == "CC BY-SA 2.5"
    assert [a.answer_id for a in q.answers] == [1, 2]
    assert q.answers[1].owner_user_id is None  # deleted user: no id, and no name either
    dumped = q.model_dump_json()
    assert "Quentin" not in dumped and "Ann Onymous" not in dumped and "Gone User" not in dumped


def test_item_without_a_link_is_a_clear_error(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=0)
    item = question(0)
    del item["link"]
    api.items = [item]
    with make_source(api, clock) as source, pytest.raises(SourceError, match=r"/questions page 1.*required field.*link"):
        source.fetch_page(1)


# -- decoding --------------------------------------------------------------------------------------


def test_gzip_body_without_content_encoding_is_inflated(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=3)
    api.script["questions"].append(respond(wrapper(api.items), header=False))
    with make_source(api, clock) as source:
        page = source.fetch_page(1)
    assert [q.question_id for q in page.questions] == [1000, 1001, 1002]
    assert page.requests == 2


BROKEN_BODIES = {
    "truncated gzip, with header": lambda: respond(None, header=True, body=gz(wrapper([question(0)]))[:-12]),
    "truncated gzip, no header": lambda: respond(None, header=False, body=gz(wrapper([question(0)]))[:40]),
    "malformed json": lambda: respond(None, header=False, body=b'{"items": [{"question_id": 1'),
    "json but not an object": lambda: respond(None, header=False, body=b"[1, 2]"),
}


@pytest.mark.parametrize("broken", BROKEN_BODIES.values(), ids=BROKEN_BODIES.keys())
def test_unreadable_bodies_are_retried_then_recover(clock: FakeClock, broken: Callable[[], httpx.Response]) -> None:
    api = FakeAPI(n_questions=5)
    api.script["questions"] += [broken, broken]
    with make_source(api, clock, max_retries=3) as source:
        page = source.fetch_page(1)
    assert len(page.questions) == 5
    assert api.calls("questions") == 3


@pytest.mark.parametrize("broken", BROKEN_BODIES.values(), ids=BROKEN_BODIES.keys())
def test_unreadable_bodies_give_a_clear_error_after_max_retries(clock: FakeClock, broken: Callable[[], httpx.Response]) -> None:
    api = FakeAPI(n_questions=5)
    api.script["questions"] += [broken] * 10
    with make_source(api, clock, max_retries=2, key=KEY) as source, pytest.raises(SourceError) as err:
        source.fetch_page(1)
    assert api.calls("questions") == 3
    message = str(err.value)
    assert "GET /questions failed 3 times" in message and "re-run" in message
    assert KEY not in message


# -- errors: retry or stop at once -----------------------------------------------------------------

ERROR_TABLE = [
    # error_id, error_name, error_message, retried?, expected fragment of our message
    (400, "bad_parameter", "No site found for name `foo`", False, "site 'foo' is not a Stack Exchange site: use e.g. 'stats'"),
    (400, "bad_parameter", "key", False, "the API key was rejected: check STACKEXCHANGE_KEY"),
    (400, "bad_parameter", "page above 25 requires access_token or app key", False, "needs an app key: set STACKEXCHANGE_KEY"),
    (400, "bad_parameter", "filter", False, "rejected filter"),
    (401, "access_token_required", "access_token is required", False, "needs an access token"),
    (402, "invalid_access_token", "invalid access_token", False, "renew STACKEXCHANGE_ACCESS_TOKEN"),
    (403, "access_denied", "denied", False, "lacks the scope"),
    (404, "no_method", "no method found with this name", False, "check base_url"),
    (405, "key_required", "`key` is required when `access_token` is passed.", False, "set STACKEXCHANGE_KEY"),
    (406, "access_token_compromised", "compromised", False, "create a new one"),
    (500, "internal_error", "oops", True, "error 500 internal_error"),
    (502, "throttle_violation", "too many requests from this IP", True, "error 502 throttle_violation"),
    (503, "temporarily_unavailable", "try again later", True, "error 503 temporarily_unavailable"),
]


@pytest.mark.parametrize(("error_id", "name", "message", "retried", "fragment"), ERROR_TABLE)
def test_error_ids_retry_or_fail_at_once(clock: FakeClock, error_id: int, name: str, message: str, retried: bool, fragment: str) -> None:
    api = FakeAPI(n_questions=5)
    api.script["questions"] += [api_error(error_id, name, message)] * 10
    site = "foo" if "site" in message else "stats"
    with make_source(api, clock, site=site, max_retries=3) as source, pytest.raises(SourceError) as err:
        source.fetch_page(1)
    assert not isinstance(err.value, QuotaExhausted)
    assert api.calls("questions") == (4 if retried else 1)
    assert fragment in str(err.value)
    assert "/questions" in str(err.value)
    # Only retries wait (>= 1 s each); a hard failure costs no more than the rate slot (0.1 s).
    assert (clock.slept >= 1) == retried


@pytest.mark.parametrize(("error_id", "name"), [(502, "throttle_violation"), (503, "temporarily_unavailable"), (500, "internal_error")])
def test_retryable_errors_recover_with_growing_delays(clock: FakeClock, error_id: int, name: str) -> None:
    api = FakeAPI(n_questions=5, clock=clock)
    api.script["questions"] += [api_error(error_id, name, "slow down")] * 3
    with make_source(api, clock, max_retries=5) as source:
        page = source.fetch_page(1)
    assert page.requests == 5 and len(page.questions) == 5  # filter + 3 errors + success
    times = [t for m, t in api.times if m == "questions"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # exponential: 1s, 2s, 4s base delays, each with up to +50% jitter
    for gap, base in zip(gaps, (1, 2, 4)):
        assert base <= gap <= base * 1.5 + 0.2


@pytest.mark.parametrize(
    "exc",
    [httpx.ReadTimeout("timed out"), httpx.ConnectError("connection refused"), httpx.RemoteProtocolError("peer closed connection")],
    ids=["timeout", "connect", "dropped"],
)
def test_transport_errors_are_retried_then_fail_clearly(clock: FakeClock, exc: Exception) -> None:
    api = FakeAPI(n_questions=5)
    api.script["questions"] += [exc, exc]
    with make_source(api, clock, max_retries=2) as source:
        assert len(source.fetch_page(1).questions) == 5
    api.script["questions"] += [exc] * 3
    with make_source(api, FakeClock(), max_retries=2) as source, pytest.raises(SourceError, match=type(exc).__name__):
        source.fetch_page(1)


def test_http_404_without_api_body_fails_at_once_naming_base_url(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=1)
    api.script["filters/create"].append(httpx.Response(404, text="<html>Not Found</html>"))
    with make_source(api, clock) as source, pytest.raises(SourceError, match=r"HTTP 404 .*base_url 'https://api\.example\.test/2\.3'"):
        source.fetch_page(1)
    assert len(api.requests) == 1


# -- backoff and the rate ceiling ------------------------------------------------------------------


def test_backoff_holds_across_pages(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=300, clock=clock)
    api.script["questions"].append(lambda: respond(wrapper(api.items[:100], has_more=True, backoff=10)))
    with make_source(api, clock) as source:
        source.fetch_page(1)
        source.fetch_page(2)
    (_, t1), (_, t2) = [x for x in api.times if x[0] == "questions"]
    assert t2 - t1 >= 10


def test_backoff_on_an_error_response_is_honoured_before_the_retry(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=5, clock=clock)
    api.script["questions"].append(api_error(502, "throttle_violation", "too many requests", backoff=30))
    with make_source(api, clock) as source:
        source.fetch_page(1)
    (_, t1), (_, t2) = [x for x in api.times if x[0] == "questions"]
    assert t2 - t1 >= 30


def test_backoff_is_per_method(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=5, clock=clock)
    api.script["filters/create"].append(respond(wrapper([{"filter": "!f"}], backoff=60)))
    with make_source(api, clock) as source:
        source.fetch_page(1)
    (_, t_filter), (_, t_questions) = api.times
    assert t_questions - t_filter < 1  # /questions is not held back by a backoff on /filters/create


def test_backoff_is_shared_by_two_clients_on_the_same_api(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=5, clock=clock)
    api.script["questions"].append(lambda: respond(wrapper(api.items, backoff=20)))
    with make_source(api, clock) as first, make_source(api, clock) as second:
        first.fetch_page(1)
        second.fetch_page(1)
    times = [t for m, t in api.times if m == "questions"]
    assert times[1] - times[0] >= 20
    assert first.governor is second.governor


def test_governors_are_separate_per_base_url_and_clock() -> None:
    c1, c2 = FakeClock(), FakeClock()
    assert governor_for("https://a.test/2.3", c1) is governor_for("https://a.test/2.3/", c1)
    assert governor_for("https://a.test/2.3", c1) is not governor_for("https://b.test/2.3", c1)
    assert governor_for("https://a.test/2.3", c1) is not governor_for("https://a.test/2.3", c2)


def test_request_rate_ceiling_on_the_fake_clock(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=1_000, clock=clock)
    with make_source(api, clock, requests_per_second=4.0) as source:
        for page in range(1, 8):
            source.fetch_page(page)
    times = [t for _, t in api.times]
    assert len(times) == 8
    assert min(b - a for a, b in zip(times, times[1:])) >= 0.25 - 1e-9


@pytest.mark.parametrize("rate", [0, -1, 30, 100])
def test_rate_ceiling_must_stay_under_30_per_second(rate: float) -> None:
    with pytest.raises(ValueError, match="under 30"):
        RequestGovernor(FakeClock(), rate)


def test_governor_waits_for_the_later_of_backoff_and_slot() -> None:
    clock = FakeClock(start=0)
    gov = RequestGovernor(clock, 10)
    assert gov.wait_turn("questions") == 0
    assert gov.wait_turn("questions") == pytest.approx(0.1)
    gov.note_backoff("questions", 5)
    gov.note_backoff("questions", 2)  # a shorter backoff never shortens a longer one
    assert gov.backoff_remaining("questions") == pytest.approx(5)
    assert gov.wait_turn("answers") == pytest.approx(0.1)
    assert gov.wait_turn("questions") == pytest.approx(5 - 0.1)


# -- quota -----------------------------------------------------------------------------------------


def test_quota_reaching_zero_keeps_the_page_and_stops_the_next_call(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=300)
    api.quota_remaining = 0
    with make_source(api, clock) as source:
        page = source.fetch_page(1)
        assert len(page.questions) == 100 and page.quota_remaining == 0
        sent = len(api.requests)
        with pytest.raises(QuotaExhausted) as err:
            source.fetch_page(2)
    assert len(api.requests) == sent  # no request was spent on a certain refusal
    assert err.value.resume_at == pytest.approx(clock.now() + 24 * 3600)
    assert "UTC" in str(err.value) and "at the latest" in str(err.value) and "STACKEXCHANGE_KEY" in str(err.value)


def test_quota_throttle_message_gives_the_resume_time(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=5)
    api.script["questions"].append(api_error(502, "throttle_violation", "too many requests from this IP, more requests available in 3600 seconds"))
    with make_source(api, clock, key=KEY) as source, pytest.raises(QuotaExhausted) as err:
        source.fetch_page(1)
    assert api.calls("questions") == 1
    assert err.value.resume_at == pytest.approx(clock.now() + 3600)
    assert "2023-11-14 23:13 UTC" in str(err.value)  # FakeClock starts at 1_700_000_000 = 22:13 UTC
    assert "STACKEXCHANGE_KEY" not in str(err.value)  # a key is already in use: no such advice


# -- secrets ---------------------------------------------------------------------------------------


def test_key_and_token_reach_the_api_but_never_logs_reprs_or_errors(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    api = FakeAPI(n_questions=5)
    api.script["questions"] += [httpx.ReadTimeout(f"timed out for ?key={KEY}"),
                                api_error(400, "bad_parameter", f"key `{KEY}` is not valid for access_token {TOKEN}")]
    source = make_source(api, clock, key=KEY, access_token=TOKEN)
    with source, pytest.raises(SourceError) as err:
        source.fetch_page(1)
    assert all(r.url.params["key"] == KEY and r.url.params["access_token"] == TOKEN for r in api.requests)
    assert any(r.name == "httpx" for r in caplog.records)  # httpx did log the requests ...
    for record in caplog.records:  # ... without the secrets
        text = record.getMessage() + repr(record.args)
        assert KEY not in text and TOKEN not in text
    for text in (str(err.value), repr(err.value), repr(source), source.describe(), repr(err.value.__cause__), repr(err.value.__context__)):
        assert KEY not in text and TOKEN not in text


_ECHOED_URL = f"/2.3/questions?site=stats&key={KEY}&access_token={TOKEN}"


@pytest.mark.parametrize(
    ("method", "response", "quoted"),
    [
        ("questions", lambda: respond({"error_id": 400, "error_name": f"bad_parameter {_ECHOED_URL}", "error_message": "x"}, 400), True),
        ("questions", lambda: respond({"error_id": f"E {_ECHOED_URL}", "error_name": "n", "error_message": "x"}, 400), True),
        ("questions", lambda: respond(wrapper([question(1, question_id=f"not-int {_ECHOED_URL}")])), False),
        ("questions", lambda: respond({}, 404, header=False, body=f"<html>Not found: {_ECHOED_URL}</html>".encode()), False),
        ("questions", lambda: respond({}, 400, header=False, body=f'{{"error_id": 400, "error_message": "{_ECHOED_URL}'.encode()), False),
        ("filters/create", lambda: respond({"error_id": 403, "error_name": f"access_denied {_ECHOED_URL}", "error_message": ""}, 403), True),
        ("questions", lambda: respond({"error_id": 503, "error_name": f"temporarily_unavailable {_ECHOED_URL}", "error_message": "x"}, 503), True),
    ],
    ids=["error_name", "error_id", "item_field", "html_page", "cut_off_json", "filter_error_name", "retried_error_name"],
)
def test_what_a_server_echoes_back_never_carries_the_secrets_into_an_error(
    clock: FakeClock, method: str, response, quoted: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """A mirror, proxy or firewall may quote the request URL, key and token included, in any field of its answer;
    errors end up in Dagster's event log and run storage. (An item's values and a body are not quoted at all.)"""
    caplog.set_level(logging.DEBUG)
    api = FakeAPI(n_questions=5)
    api.script[method] += [response] * 10  # retried ones keep failing the same way
    source = make_source(api, clock, key=KEY, access_token=TOKEN, max_retries=1)
    with source, pytest.raises(SourceError) as err:
        source.fetch_page(1)
    assert ("key=***" in str(err.value)) is quoted
    chain, todo = [], [err.value]  # everything a traceback printer or an error reporter could reach
    while todo:
        e = todo.pop()
        chain.append(e)
        todo += [x for x in (e.__cause__, e.__context__) if x is not None]
    for text in [str(e) for e in chain] + [repr(e) for e in chain] + [str(getattr(e, "doc", "")) for e in chain]:
        assert KEY not in text and TOKEN not in text
    for record in caplog.records:  # nor into a log line (a retried error is logged before the next try)
        assert KEY not in record.getMessage() and TOKEN not in record.getMessage(), record.getMessage()


def test_httpcore_debug_logs_are_redacted_too(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    make_source(FakeAPI(1), clock).close()  # installs the filters
    caplog.set_level(logging.DEBUG, logger="httpcore")
    headers = [(b"Location", f"https://x.test{_ECHOED_URL}".encode())]
    logging.getLogger("httpcore.http11").debug("receive_response_headers.complete return_value=%r", (b"HTTP/1.1", 302, headers))
    assert KEY not in caplog.records[-1].getMessage() and "key=***" in caplog.records[-1].getMessage()


def test_httpx_logger_redacts_secrets_in_any_url(caplog: pytest.LogCaptureFixture, clock: FakeClock) -> None:
    make_source(FakeAPI(1), clock).close()  # installs the filter
    caplog.set_level(logging.INFO, logger="httpx")
    logging.getLogger("httpx").info("HTTP Request: %s %s", "GET", f"https://x.test/2.3/questions?site=stats&key={KEY}&access_token={TOKEN}")
    assert caplog.records[-1].getMessage() == "HTTP Request: GET https://x.test/2.3/questions?site=stats&key=***&access_token=***"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/q?key=abc&site=stats", "/q?key=***&site=stats"),
        ("/q?site=stats&access_token=a(b)c", "/q?site=stats&access_token=***"),
        ("/q?site=stats&monkey=1", "/q?site=stats&monkey=1"),
        ("no url here", "no url here"),
        ("GET https://me:pw@mirror.test/2.3/questions failed", "GET https://***@mirror.test/2.3/questions failed"),
        ("at http://token@mirror.test:8080/2.3", "at http://***@mirror.test:8080/2.3"),
        ("a@b in prose, //path/x@y", "a@b in prose, //path/x@y"),
        ("GET https://me:it's\"a@secret@mirror.test/2.3 x", "GET https://***@mirror.test/2.3 x"),
    ],
)
def test_redact_url_secrets(text: str, expected: str) -> None:
    assert redact_url_secrets(text) == expected


def test_a_password_in_base_url_is_used_but_never_shown(
    clock: FakeClock, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """httpx sends base_url's user:password as Basic auth; the batch file, checkpoints, describe(), repr, every
    error and httpx's own log lines show the URL without it (httpx leaves a quote in it unescaped)."""
    from cv_pipeline.collection import collect_batch
    from cv_pipeline.partitions import RankRange

    caplog.set_level(logging.INFO, logger="httpx")
    password = "S3cret'Passw0rd"
    base = f"https://mirror-user:{password}@api.example.test/2.3"
    api = FakeAPI(n_questions=5)
    with make_source(api, clock, base_url=base) as source:
        batch = collect_batch(source, RankRange(0, 100), tmp_path / "batch.json", tmp_path / "ck")
        shown = [source.describe(), repr(source)]
    assert len(batch.questions) == 5
    assert api.requests[-1].headers["authorization"].startswith("Basic ")  # still used
    assert shown[0] == "api https://api.example.test/2.3 site=stats"
    api.script["questions"].append(httpx.Response(404, text="<html>Not Found</html>"))
    with make_source(api, clock, base_url=base) as source, pytest.raises(SourceError, match="api.example.test") as err:
        source.fetch_page(1)
    written = [p.read_text() for p in tmp_path.rglob("*") if p.is_file()]
    logged = [r.getMessage() for r in caplog.records]
    assert logged and written
    assert not any("Passw0rd" in text or "mirror-user" in text for text in [*written, *shown, str(err.value), *logged])


def test_a_lone_surrogate_escaped_in_the_json_is_dropped_not_a_crash(clock: FakeClock, tmp_path: Path) -> None:
    """JSON may escape half a UTF-16 pair ("\\ud83d"); json.loads keeps it, and no UTF-8 file can hold it. A whole
    escaped pair stays one character."""
    from cv_pipeline.collection import collect_batch
    from cv_pipeline.partitions import RankRange

    api = FakeAPI(n_questions=2)
    api.items[0]["title"] = "p-value \ud83d"  # json.dumps escapes it: "p-value \\ud83d"
    api.items[1]["title"] = "smile \ud83d\ude00"  # a pair, escaped as two halves: json.loads joins them
    body = json.dumps(wrapper(api.items)).encode()
    assert b"\\ud83d\\ude00" in body
    api.script["questions"].append(httpx.Response(200, content=gzip.compress(body), headers={"content-encoding": "gzip"}))
    with make_source(api, clock) as source:
        batch = collect_batch(source, RankRange(0, 100), tmp_path / "batch.json", tmp_path / "ck")
        assert source.lone_surrogates_dropped == 1
    assert [q.title for q in batch.questions] == ["p-value ", "smile \U0001f600"]
    assert "\U0001f600" in (tmp_path / "batch.json").read_text(encoding="utf-8")


def test_local_describe_drops_the_ephemeral_port(clock: FakeClock) -> None:
    with make_source(FakeAPI(1), clock, base_url="http://127.0.0.1:50123/2.3") as source:
        assert source.describe() == "api http://127.0.0.1/2.3 site=stats"


@pytest.mark.parametrize(("kwargs", "fragment"), [({"site": ""}, "use e.g. 'stats'"), ({"page_size": 101}, "1..100"), ({"max_retries": -1}, "max_retries")])
def test_bad_constructor_input_is_a_clear_error(clock: FakeClock, kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        make_source(FakeAPI(1), clock, **kwargs)


# -- real API responses ----------------------------------------------------------------------------


def _load(realdata: Path, name: str) -> dict:
    return json.loads((realdata / "api" / name).read_text(encoding="utf-8"))


def test_real_votes_page_maps_to_raw_questions(realdata: Path) -> None:
    payload = _load(realdata, "api_questions_sort_votes_stackoverflow_2018.extracted.json")
    questions = {q.question_id: q for q in (question_from_api_item(item, i) for i, item in enumerate(payload["items"]))}
    assert questions[292357].title == "What is the difference between 'git pull' and 'git fetch'?"
    assert questions[231767].title == 'What does the "yield" keyword do?'
    assert questions[1642028].title == 'What is the "-->" operator in C++?'
    first = questions[11227809]
    assert (first.rank, first.owner_user_id, first.accepted_answer_id, first.score) == (0, 87234, 11227902, 21619)
    assert first.tags == ["java", "c++", "performance", "optimization", "branch-prediction"]
    assert first.body_html == "" and first.top_answer is None  # default filter: no body, no answers
    assert questions[503093].locked_date is not None and questions[503093].community_owned_date is None
    assert questions[927358].community_owned_date is not None
    assert "GManNickG" not in first.model_dump_json()


def test_real_closed_question_keeps_close_fields(realdata: Path) -> None:
    payload = _load(realdata, "api_questions_stackoverflow_2015_stackdash.json")
    item = next(i for i in payload["items"] if i["question_id"] == 31863875)
    q = question_from_api_item(item, 3)
    assert q.closed_date == item["closed_date"] and q.closed_reason == html.unescape(item["closed_reason"])


def test_real_withbody_question_and_answer(realdata: Path) -> None:
    q_item = _load(realdata, "api_question_withbody_stackoverflow_11227809.json")["items"][0]
    a_item = _load(realdata, "api_answer_withbody_stackoverflow_11227902.json")["items"][0]
    q = question_from_api_item({**q_item, "answers": [a_item]}, 0)
    assert q.body_html.startswith("<p>In this C++ code") and "&lt;algorithm&gt;" in q.body_html
    assert (q.content_license, q.creation_date, q.accepted_answer_id) == ("CC BY-SA 4.0", 1340805096, 11227902)
    a = answer_from_api_item(a_item)
    assert q.top_answer == a
    assert (a.is_accepted, a.score, a.owner_user_id, a.content_license) == (True, 35276, 922184, "CC BY-SA 4.0")
    assert '<table class="s-table">' in a.body_html


def test_real_page_through_the_whole_client(realdata: Path, clock: FakeClock) -> None:
    payload = _load(realdata, "api_questions_sort_votes_stackoverflow_2018.extracted.json")
    api = FakeAPI(n_questions=0)
    api.script["questions"].append(respond(payload, header=False))
    with make_source(api, clock, site="stackoverflow", page_size=10) as source:
        page = source.fetch_page(3)
    assert [q.rank for q in page.questions] == list(range(20, 30))
    assert (page.has_more, page.quota_max, page.quota_remaining) == (True, 300, 299)


def test_short_throttle_wait_is_waited_out_then_retried(clock: FakeClock) -> None:
    api = FakeAPI(n_questions=5, clock=clock)
    api.script["questions"].append(api_error(502, "throttle_violation", "too many requests from this IP, more requests available in 60 seconds"))
    with make_source(api, clock) as source:
        assert len(source.fetch_page(1).questions) == 5
    (_, t1), (_, t2) = [x for x in api.times if x[0] == "questions"]
    assert t2 - t1 >= 60


# -- against the real sample site (loopback HTTP, gzip, the real transport) -------------------------


@pytest.fixture
def site_clock() -> FakeClock:
    return FakeClock(start=time.time())  # the site refills quotas by UTC day: keep a real date


def test_sample_site_pages_and_mapping(site_clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with SampleSite(n_questions=250, clock=site_clock.now, valid_keys={KEY}) as site:
        with StackExchangeAPISource(base_url=site.base_url, key=KEY, clock=site_clock) as source:
            pages = [source.fetch_page(p) for p in (1, 2, 3)]
        log = site.request_log
    assert [len(p.questions) for p in pages] == [100, 100, 50] and not pages[-1].has_more
    assert [path for path, _ in log] == ["/2.3/filters/create"] + ["/2.3/questions"] * 3
    assert all(params["key"] == "REDACTED" for _, params in log)  # the key did reach the site
    for page in pages:
        for i, q in enumerate(page.questions):
            truth = site.corpus.question(q.rank)
            assert q.rank == (page.page - 1) * 100 + i
            assert (q.question_id, q.title, q.tags, q.score) == (truth["question_id"], truth["title"], truth["tags"], truth["score"])
            assert q.body_html == truth["body"]
            if truth.get("answers"):
                best = max(truth["answers"], key=lambda a: (a["score"], a.get("is_accepted", False), -a["answer_id"]))
                assert q.top_answer is not None and q.top_answer.answer_id == best["answer_id"]
    assert any("&" in q.title or '"' in q.title or "'" in q.title for p in pages for q in p.questions)
    for record in caplog.records:
        assert KEY not in record.getMessage() + repr(record.args)


class _ForwardingProxy(http.server.ThreadingHTTPServer):
    """A plain HTTP forward proxy on loopback: receives absolute URLs, sends them on to ``upstream``."""

    def __init__(self, upstream: str):
        self.upstream = upstream.rstrip("/")
        self.seen: list[str] = []
        super().__init__(("127.0.0.1", 0), _ProxyHandler)


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    server: _ForwardingProxy

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.server.seen.append(self.path)
        parts = urlsplit(self.path)  # a proxy is sent the whole URL
        target = self.server.upstream + parts.path + (f"?{parts.query}" if parts.query else "")
        with httpx.Client(trust_env=False) as client:
            upstream = client.get(target, headers={"Accept-Encoding": "gzip"})
        body = upstream.read()  # decoded by httpx: forwarded without Content-Encoding
        self.send_response(upstream.status_code)
        self.send_header("Content-Type", upstream.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_client_goes_through_the_proxy_the_environment_names(
    site_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """httpx ignores HTTP_PROXY once a transport is passed; behind a proxy the client must still get out."""
    with SampleSite(n_questions=150, clock=site_clock.now, valid_keys={KEY}) as site:
        proxy = _ForwardingProxy(urlsplit(site.base_url)._replace(path="").geturl())
        threading.Thread(target=proxy.serve_forever, daemon=True).start()
        try:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_address[1]}")
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            monkeypatch.delenv("http_proxy", raising=False)
            # a host only the proxy can reach (.invalid never resolves)
            with StackExchangeAPISource(base_url="http://api.cv-sample.invalid/2.3", key=KEY, clock=site_clock) as src:
                page = src.fetch_page(1)
            assert len(page.questions) == 100
            assert [urlsplit(u).path for u in proxy.seen] == ["/2.3/filters/create", "/2.3/questions"]
            assert all(urlsplit(u).hostname == "api.cv-sample.invalid" for u in proxy.seen)
            # loopback and NO_PROXY hosts go direct, whatever the proxy variables say
            before = len(proxy.seen)
            with StackExchangeAPISource(base_url=site.base_url, clock=site_clock) as direct:
                assert len(direct.fetch_page(1).questions) == 100
            assert len(proxy.seen) == before
        finally:
            proxy.shutdown()
            proxy.server_close()


@pytest.mark.parametrize(
    ("env", "url", "expected"),
    [
        ({"HTTPS_PROXY": "http://p:3128"}, "https://api.stackexchange.com/2.3", "http://p:3128"),
        ({"https_proxy": "http://p:3128", "NO_PROXY": "stackexchange.com"}, "https://api.stackexchange.com/2.3", None),
        ({"HTTP_PROXY": "http://p:3128"}, "https://api.stackexchange.com/2.3", None),  # https needs HTTPS_PROXY
        ({"ALL_PROXY": "http://p:1080"}, "https://api.stackexchange.com/2.3", "http://p:1080"),
        ({"HTTPS_PROXY": "http://p:3128", "HTTP_PROXY": "http://p:3128"}, "http://127.0.0.1:8123/2.3", None),
        ({"HTTP_PROXY": "http://p:3128"}, "http://localhost:8123/2.3", None),
        ({}, "https://api.stackexchange.com/2.3", None),
        ({"HTTPS_PROXY": "proxy.corp:3128"}, "https://api.stackexchange.com/2.3", "http://proxy.corp:3128"),  # no scheme
    ],
)
def test_proxy_for(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], url: str, expected: str | None) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert proxy_for(url) == expected



def test_a_proxy_httpx_cannot_use_is_a_source_error_without_its_password(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    monkeypatch.setenv("HTTPS_PROXY", "ftp://user:hunter2@proxy.corp:3128")
    with pytest.raises(SourceError, match="HTTPS_PROXY.*http://host:port") as err:
        StackExchangeAPISource(base_url="https://api.stackexchange.com/2.3")
    assert "hunter2" not in str(err.value) and err.value.__cause__ is None and err.value.__suppress_context__
    for typo in ("http://user:hunter2@proxy.corp:31 28", "http://user:hunter2@proxy.corp:notaport", "http://[::1"):
        monkeypatch.setenv("HTTPS_PROXY", typo)  # httpx.InvalidURL, which is no ValueError
        with pytest.raises(SourceError, match="HTTPS_PROXY") as err:
            StackExchangeAPISource(base_url="https://api.stackexchange.com/2.3")
        assert "hunter2" not in str(err.value)
    monkeypatch.setenv("HTTPS_PROXY", "proxy.corp:3128")  # no scheme: taken as http://, as httpx and curl do
    StackExchangeAPISource(base_url="https://api.stackexchange.com/2.3").close()

@pytest.mark.parametrize(
    ("faults", "requests"),
    [({"throttle_next": 2}, 3), ({"unavailable_next": 3}, 4), ({"truncate_next": 2}, 3), ({"malformed_next": 2}, 3),
     ({"drop_next": 2}, 3), ({"no_content_encoding": True}, 1), ({"throttle_next": 1, "throttle_backoff": 90, "drop_next": 1}, 3)],
    ids=lambda f: ",".join(f) if isinstance(f, dict) else str(f),
)
def test_sample_site_faults_are_survived(site_clock: FakeClock, faults: dict, requests: int) -> None:
    with SampleSite(n_questions=120, clock=site_clock.now) as site:
        with StackExchangeAPISource(base_url=site.base_url, clock=site_clock, timeout=5) as source:
            source.filter_id()
            site.faults.update(**faults)
            started = site_clock.now()
            page = source.fetch_page(2)
    assert [q.rank for q in page.questions] == list(range(100, 120))
    assert page.requests == requests
    assert site.backoff_violations == 0
    if faults.get("throttle_backoff"):
        assert site_clock.now() - started >= 90


def test_sample_site_backoff_every_response_is_honoured(site_clock: FakeClock) -> None:
    with SampleSite(n_questions=400, clock=site_clock.now, faults=Faults(backoff_every=1, backoff_seconds=5)) as site:
        with StackExchangeAPISource(base_url=site.base_url, clock=site_clock) as source:
            pages = [source.fetch_page(p) for p in (1, 2, 3)]
        with StackExchangeAPISource(base_url=site.base_url, clock=site_clock) as second:
            second.fetch_page(4)
    assert sum(len(p.questions) for p in pages) == 300
    assert site.backoff_violations == 0  # the site refuses (and counts) any call inside a backoff
    assert site_clock.sleeps.count(5.0) >= 2


def test_sample_site_quota_exhaustion(site_clock: FakeClock) -> None:
    with SampleSite(n_questions=500, clock=site_clock.now, quota_max=3, valid_keys={KEY}) as site:
        with StackExchangeAPISource(base_url=site.base_url, key=KEY, clock=site_clock) as source:
            first, second = source.fetch_page(1), source.fetch_page(2)
            with pytest.raises(QuotaExhausted) as err:
                source.fetch_page(3)
        # a fresh client learns it from the site's own throttle message instead
        with StackExchangeAPISource(base_url=site.base_url, key=KEY, clock=site_clock) as fresh, pytest.raises(QuotaExhausted) as err2:
            fresh.fetch_page(3)
    assert (first.quota_remaining, second.quota_remaining) == (1, 0)
    assert err.value.resume_at is not None and err.value.resume_at > site_clock.now()
    assert err2.value.resume_at is not None and "UTC" in str(err2.value) and KEY not in str(err2.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"site": "foo"}, "site 'foo' is not a Stack Exchange site"), ({"key": "wrong-" + KEY}, "the API key was rejected"),
     ({"key": KEY, "access_token": TOKEN}, "renew STACKEXCHANGE_ACCESS_TOKEN"), ({"access_token": TOKEN}, "set STACKEXCHANGE_KEY")],
)
def test_sample_site_bad_input_fails_at_once(site_clock: FakeClock, kwargs: dict, fragment: str) -> None:
    with SampleSite(n_questions=50, clock=site_clock.now, valid_keys={KEY}, valid_access_tokens={"other"}) as site:
        with StackExchangeAPISource(base_url=site.base_url, clock=site_clock, **kwargs) as source, pytest.raises(SourceError) as err:
            source.fetch_page(1)
        requests = site.requests
    assert fragment in str(err.value)
    assert requests <= 2  # the filter, then the refused call: no retries
    assert KEY not in str(err.value) and TOKEN not in str(err.value)


@pytest.mark.parametrize("url", ["api.stackexchange.com/2.3", "ftp://api.stackexchange.com/2.3", "https://", "http://u:secret@"])
def test_a_base_url_that_is_no_http_url_is_a_setting_error_not_an_outage(url: str, tmp_path: Path) -> None:
    """A malformed api_base_url used to be retried six times as a network failure, then by the step's RetryPolicy,
    ending with "unavailable or throttling: wait a few minutes". It fails at once, naming the setting."""
    import dagster as dg

    from cv_pipeline.defs.collection.assets import raw_question_batches
    from cv_pipeline.defs.resources import DataDirResource, StackExchangeResource
    from cv_pipeline.sources.base import SourceConfigError

    with pytest.raises(SourceConfigError, match="api_base_url .* is not an http\\(s\\) URL") as caught:
        StackExchangeAPISource(base_url=url)
    assert isinstance(caught.value, ValueError) and "secret" not in str(caught.value)

    resources = {"stackexchange": StackExchangeResource(source="api", api_base_url=url),
                 "data_dir": DataDirResource(path=str(tmp_path))}
    result = dg.materialize([raw_question_batches], partition_key="00000-04999", resources=resources,
                            raise_on_error=False)
    kinds = [e.event_type_value for e in result.all_events]
    assert "STEP_UP_FOR_RETRY" not in kinds and kinds.count("STEP_FAILURE") == 1
    [failure] = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "api_base_url" in failure.event_specific_data.error.message


def test_settings_outside_the_apis_limits_are_setting_errors() -> None:
    from cv_pipeline.sources.base import SourceConfigError

    for bad in (dict(page_size=101), dict(site=""), dict(requests_per_second=30), dict(max_retries=-1)):
        with pytest.raises(SourceConfigError):
            StackExchangeAPISource(**bad)
