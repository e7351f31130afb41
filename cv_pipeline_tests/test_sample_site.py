"""The sample site, checked with plain httpx (not the project client) the way the real API behaves."""

from __future__ import annotations

import gzip
import html
import json
import re
import signal
import socket
import subprocess
import sys
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest

from cv_pipeline.sources.sample_site import Faults, SampleCorpus, SampleSite
from cv_pipeline.sources.sample_site.corpus import content_license, slugify
from cv_pipeline.sources.sample_site.filters import make_filter

N = 450
Q = {"site": "stats", "sort": "votes", "order": "desc"}
FULL = make_filter(["question.body", "question.answers", "answer.body"])


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def site() -> Iterator[SampleSite]:
    with SampleSite(n_questions=N, seed=0) as s:
        yield s


def _client(site: SampleSite, timeout: float = 10) -> httpx.Client:
    # verify=False: plain HTTP on loopback, and it skips loading CA certificates (~0.1 s per client).
    return httpx.Client(base_url=site.base_url, timeout=timeout, verify=False)


@pytest.fixture(scope="module")
def client(site: SampleSite) -> Iterator[httpx.Client]:
    with _client(site) as c:
        yield c


def _raw(c: httpx.Client, path: str, params: dict[str, object]) -> tuple[httpx.Response, bytes]:
    """Response and its body bytes exactly as sent (no content decoding)."""
    with c.stream("GET", path, params=params) as r:
        return r, b"".join(r.iter_raw())


def _error(r: httpx.Response) -> dict[str, object]:
    assert r.status_code == 400, r.text
    body = r.json()
    assert set(body) >= {"error_id", "error_name", "error_message"}
    return body


# -- paging and ranking ------------------------------------------------------------------------
def test_paging_covers_every_rank_once_in_score_order(site: SampleSite, client: httpx.Client) -> None:
    ids, scores, page, has_more = [], [], 1, True
    while has_more:
        body = client.get("/questions", params={**Q, "page": page, "pagesize": 100}).json()
        ids += [q["question_id"] for q in body["items"]]
        scores += [q["score"] for q in body["items"]]
        has_more, page = body["has_more"], page + 1
    assert page - 1 == 5  # 450 questions = 4 full pages + 50
    assert ids == [site.corpus.question_id(r) for r in range(N)]
    assert len(set(ids)) == N
    assert all(a >= b for a, b in zip(scores, scores[1:]))
    assert any(a == b for a, b in zip(scores, scores[1:])), "ties should occur further down the ranking"
    assert ids != list(range(N)) and all(i != r for r, i in enumerate(ids))


def test_order_asc_and_page_past_end(client: httpx.Client) -> None:
    asc = client.get("/questions", params={**Q, "order": "asc", "pagesize": 5}).json()["items"]
    desc = client.get("/questions", params={**Q, "page": 90, "pagesize": 5}).json()["items"]
    assert [q["question_id"] for q in asc] == [q["question_id"] for q in reversed(desc)]
    past = client.get("/questions", params={**Q, "page": 100, "pagesize": 5}).json()
    assert past["items"] == [] and past["has_more"] is False


def test_lookup_by_ids_omits_unknown(site: SampleSite, client: httpx.Client) -> None:
    wanted = [site.corpus.question_id(r) for r in (7, 3, 200)]
    body = client.get(f"/questions/{';'.join(map(str, wanted + [2]))}", params={"site": "stats"}).json()
    assert [q["question_id"] for q in body["items"]] == [wanted[1], wanted[0], wanted[2]]  # by votes


# -- filters ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("filter_", "body", "answers", "answer_body"),
    [("default", False, False, False), ("withbody", True, False, False), (FULL, True, True, True),
     (make_filter(["question.answers"]), False, True, False)],
)
def test_filter_gates_body_and_answers(client: httpx.Client, filter_: str, body: bool, answers: bool, answer_body: bool) -> None:
    items = client.get("/questions", params={**Q, "pagesize": 30, "filter": filter_}).json()["items"]
    assert all(("body" in q) is body for q in items)
    assert any("answers" in q for q in items) is answers
    embedded = [a for q in items for a in q.get("answers", [])]
    assert all(("body" in a) is answer_body for a in embedded)
    assert all({"title", "score", "question_id", "link", "owner", "tags"} <= set(q) for q in items)


def test_created_filter_is_opaque_deterministic_and_permanent(client: httpx.Client) -> None:
    params = {"include": "question.body;question.answers;answer.body", "base": "default", "unsafe": "false"}
    item = client.get("/filters/create", params=params).json()["items"][0]
    assert item["filter"] == FULL and item["filter_type"] == "safe"
    assert {"question.body", "question.answers", "answer.body", ".items"} <= set(item["included_fields"])
    with SampleSite(n_questions=20, seed=9) as other, _client(other) as c2:  # another instance accepts it
        assert "answers" in c2.get("/questions", params={**Q, "filter": FULL}).json()["items"][0]


@pytest.mark.parametrize("bad", ["!nope", FULL[:-1] + ("x" if FULL[-1] != "x" else "y"), "withbodyy"])
def test_unknown_filter_is_bad_parameter(client: httpx.Client, bad: str) -> None:
    assert _error(client.get("/questions", params={**Q, "filter": bad}))["error_name"] == "bad_parameter"


def test_unknown_field_in_filter_create(client: httpx.Client) -> None:
    err = _error(client.get("/filters/create", params={"include": "question.nonsense"}))
    assert err["error_id"] == 400 and "question.nonsense" in err["error_message"]


def test_titles_and_names_are_html_escaped_like_the_api(site: SampleSite, client: httpx.Client) -> None:
    items = client.get("/questions", params={**Q, "pagesize": 100, "page": 1}).json()["items"]
    items += client.get("/questions", params={**Q, "pagesize": 100, "page": 2}).json()["items"]
    raw = {q["question_id"]: q["title"] for q in items}
    plain = {site.corpus.question_id(r): site.corpus.question(r)["title"] for r in range(200)}
    assert {k: html.unescape(v) for k, v in raw.items()} == plain
    escaped = [t for t in raw.values() if re.search(r"&(#39|quot|amp|lt);", t)]
    assert escaped, "some titles carry ' \" & or < and must arrive escaped"
    assert not any(re.search(r"['\"<]", t) for t in raw.values())
    unsafe = make_filter(unsafe=True)
    titles = [q["title"] for q in client.get("/questions", params={**Q, "pagesize": 100, "filter": unsafe}).json()["items"]]
    assert titles == [plain[q["question_id"]] for q in items[:100]]


# -- gzip ---------------------------------------------------------------------------------------
def test_gzip_with_header(client: httpx.Client) -> None:
    r, raw = _raw(client, "/questions", {**Q, "pagesize": 3})
    assert r.headers["content-encoding"] == "gzip" and raw[:2] == b"\x1f\x8b"
    assert len(json.loads(gzip.decompress(raw))["items"]) == 3


def test_gzip_without_header_still_decodes(site: SampleSite, client: httpx.Client) -> None:
    site.faults.no_content_encoding = True
    try:
        r = client.get("/questions", params={**Q, "pagesize": 3})
    finally:
        site.faults.no_content_encoding = False
    assert "content-encoding" not in r.headers and r.content[:2] == b"\x1f\x8b"
    assert len(json.loads(gzip.decompress(r.content))["items"]) == 3


# -- faults -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("switches", "error_id", "error_name"),
    [({"throttle_next": 2}, 502, "throttle_violation"), ({"unavailable_next": 2}, 503, "temporarily_unavailable"),
     ({"fail_next": 2, "fail_error_id": 403}, 403, "access_denied"),
     ({"fail_next": 2, "fail_error_id": 406}, 406, "access_token_compromised")],
)
def test_error_faults_then_recovery(switches: dict[str, int], error_id: int, error_name: str) -> None:
    with SampleSite(n_questions=50, faults=Faults(**switches)) as s, _client(s) as c:
        for _ in range(2):
            err = _error(c.get("/questions", params=Q))
            assert (err["error_id"], err["error_name"]) == (error_id, error_name)
            assert "backoff" not in err
        assert len(c.get("/questions", params=Q).json()["items"]) == 30


def test_throttle_with_backoff_field_and_it_is_enforced() -> None:
    clock = FakeClock(1_700_000_000.0)
    with SampleSite(n_questions=50, faults=Faults(throttle_next=1, throttle_backoff=7), clock=clock) as s, _client(s) as c:
        assert _error(c.get("/questions", params=Q))["backoff"] == 7
        err = _error(c.get("/questions", params=Q))
        assert err["error_id"] == 502 and "backoff" in err["error_message"] and s.backoff_violations == 1
        clock.now += 7
        assert c.get("/questions", params=Q).status_code == 200


def test_truncate_cuts_the_gzip_body() -> None:
    with SampleSite(n_questions=50) as s, _client(s) as c:
        _, whole = _raw(c, "/questions", Q)
        s.faults.truncate_next = 1  # switched on at runtime
        r, cut = _raw(c, "/questions", Q)
    assert int(r.headers["content-length"]) == len(cut)
    assert len(cut) < len(whole)
    with pytest.raises((EOFError, zlib.error)):
        gzip.decompress(cut)


def test_malformed_is_valid_gzip_of_invalid_json() -> None:
    with SampleSite(n_questions=50, faults=Faults(malformed_next=1)) as s, _client(s) as c:
        _, raw = _raw(c, "/questions", Q)
        text = gzip.decompress(raw)
        with pytest.raises(json.JSONDecodeError):
            json.loads(text)
        assert c.get("/questions", params=Q).json()["items"]


def test_drop_closes_without_response_and_is_counted() -> None:
    with SampleSite(n_questions=50, faults=Faults(drop_next=1)) as s, _client(s) as c:
        with pytest.raises(httpx.RemoteProtocolError):
            c.get("/questions", params=Q)
        assert c.get("/questions", params=Q).status_code == 200
        assert s.requests == 2 and s.faults.drop_next == 0


def test_slow_answer_trips_a_short_client_timeout() -> None:
    with SampleSite(n_questions=50, faults=Faults(slow_seconds=1.0)) as s, _client(s, timeout=0.2) as c:
        with pytest.raises(httpx.ReadTimeout):
            c.get("/questions", params=Q)


@pytest.mark.parametrize(("name", "value", "error"), [("drop_next", -1, ValueError), ("explode_next", 1, AttributeError),
                                                       ("fail_error_id", 999, ValueError)])
def test_faults_reject_bad_switches(name: str, value: int, error: type[Exception]) -> None:
    with pytest.raises(error, match=name):
        Faults().update(**{name: value})


def test_backoff_every_kth_success_and_violation() -> None:
    clock = FakeClock(1_700_000_000.0)
    faults = Faults(backoff_every=2, backoff_seconds=5)
    with SampleSite(n_questions=50, faults=faults, clock=clock) as s, _client(s) as c:
        assert "backoff" not in c.get("/questions", params=Q).json()
        assert c.get("/questions", params=Q).json()["backoff"] == 5
        assert c.get("/info", params={"site": "stats"}).status_code == 200  # backoff is per method
        assert _error(c.get("/questions", params=Q))["error_name"] == "throttle_violation"
        clock.now += 5
        assert c.get("/questions", params=Q).status_code == 200


# -- quota, keys, tokens ----------------------------------------------------------------------
def test_quota_decrements_per_key_exhausts_and_refills_at_utc_midnight() -> None:
    clock = FakeClock(datetime(2025, 1, 1, 23, 0, tzinfo=timezone.utc).timestamp())
    with SampleSite(n_questions=50, quota_max=3, clock=clock) as s, _client(s) as c:
        seen = [c.get("/questions", params={**Q, "key": "k1"}).json()["quota_remaining"] for _ in range(3)]
        assert seen == [2, 1, 0]
        err = _error(c.get("/questions", params={**Q, "key": "k1"}))
        assert err["error_id"] == 502
        assert err["error_message"] == "too many requests from this IP, more requests available in 3600 seconds"
        other = c.get("/questions", params={**Q, "key": "k2"}).json()
        assert (other["quota_max"], other["quota_remaining"]) == (3, 2)
        assert s.quota_remaining("k1") == 0
        clock.now += 3600
        assert c.get("/questions", params={**Q, "key": "k1"}).json()["quota_remaining"] == 2


def test_bad_key_is_rejected_without_echo_and_log_redacts_secrets() -> None:
    secret = "s3cr3t-KEY-value"
    with SampleSite(n_questions=50, valid_keys={"good-key"}, valid_access_tokens={"tok"}) as s, _client(s) as c:
        r = c.get("/questions", params={**Q, "key": secret})
        assert _error(r)["error_name"] == "bad_parameter" and secret not in r.text
        assert _error(c.get("/questions", params={**Q, "key": "good-key", "access_token": "bad"}))["error_id"] == 402
        assert _error(c.get("/questions", params={**Q, "access_token": "tok"}))["error_id"] == 405
        assert c.get("/questions", params={**Q, "key": "good-key", "access_token": "tok"}).status_code == 200
        assert c.get("/questions", params=Q).status_code == 200  # no key at all is allowed
        log = s.request_log
    assert len(log) == 5 and all(p["key"] == "REDACTED" for _, p in log if "key" in p)
    assert secret not in repr(log) and "tok" not in repr([p.get("access_token") for _, p in log])


@pytest.mark.parametrize(
    ("path", "params", "error_id", "message"),
    [("/questions", {"sort": "votes"}, 400, "site is required"),
     ("/questions", {"site": "stackoverflow", "sort": "votes"}, 400, "No site found for name `stackoverflow`"),
     ("/questions", {**Q, "pagesize": 101}, 400, "pagesize"),
     ("/questions", {**Q, "page": 0}, 400, "page"),
     ("/questions", {**Q, "pagesize": "ten"}, 400, "pagesize"),
     ("/questions", {"site": "stats", "sort": "activity"}, 400, "sort=votes"),
     ("/answers", {"site": "stats"}, 404, "no method"),
     ("/info", {"site": "meta"}, 400, "No site found")],
)
def test_bad_requests(client: httpx.Client, path: str, params: dict[str, object], error_id: int, message: str) -> None:
    err = _error(client.get(path, params=params))
    assert err["error_id"] == error_id and message in str(err["error_message"])


@pytest.mark.parametrize("name", ["stats", "stats.stackexchange.com", "stats.stackexchange"])
def test_site_aliases(client: httpx.Client, name: str) -> None:
    assert client.get("/questions", params={**Q, "site": name, "pagesize": 1}).status_code == 200


def test_info_counts_the_corpus(site: SampleSite, client: httpx.Client) -> None:
    info = client.get("/info", params={"site": "stats"}).json()["items"][0]
    threads = [site.corpus.question(r) for r in range(N)]
    assert info["total_questions"] == N
    assert info["total_answers"] == sum(len(q["answers"]) for q in threads)
    assert info["total_unanswered"] == sum(not q["answers"] for q in threads)


# -- network hygiene and determinism ------------------------------------------------------------
def test_binds_loopback_only(site: SampleSite) -> None:
    host, port = site.address
    assert host == "127.0.0.1" and site.base_url == f"http://127.0.0.1:{port}/2.3"
    with pytest.raises(OSError):  # another loopback address of this host gets no answer
        socket.create_connection(("127.0.0.2", port), timeout=2).close()


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    pages = []
    for seed in (0, 0, 1):
        with SampleSite(n_questions=300, seed=seed) as s, _client(s) as c:
            pages.append(_raw(c, "/questions", {**Q, "page": 2, "pagesize": 50, "filter": FULL})[1])
    assert pages[0] == pages[1] and pages[0] != pages[2]


def test_question_does_not_depend_on_corpus_size() -> None:
    assert SampleCorpus(10).question(7) == SampleCorpus(5000).question(7)
    assert SampleCorpus(10).rank_of(SampleCorpus(5000).question_id(4000)) is None


def test_standalone_command(tmp_path: object) -> None:
    proc = subprocess.Popen([sys.executable, "-m", "cv_pipeline.sources.sample_site", "--port", "0", "--questions", "40"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        url = re.search(r"http://127\.0\.0\.1:\d+/2\.3", proc.stdout.readline())
        assert url, "the command prints its base URL"
        body = httpx.get(f"{url.group(0)}/questions", params=Q, timeout=10, verify=False).json()
        assert len(body["items"]) == 30 and body["has_more"] is True
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            status = Path(f"/proc/{proc.pid}/status")
            state = [ln for ln in status.read_text().splitlines() if ln.startswith(("State", "Sig", "ShdPnd"))] if status.exists() else []
            proc.kill()
            proc.wait()
            pytest.fail(f"the sample-site command ignored SIGTERM for 60 s: {state}")


def test_standalone_command_stops_on_sigterm_even_when_its_parent_ignores_it() -> None:
    """An ignored SIGTERM survives exec (Dagster's in-process runs leave a background job ignoring it)."""
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the child inherits it (no preexec_fn: threads)
    try:
        proc = subprocess.Popen([sys.executable, "-m", "cv_pipeline.sources.sample_site", "--port", "0", "--questions", "20"],
                                stdout=subprocess.PIPE, text=True)
    finally:
        signal.signal(signal.SIGTERM, before)
    try:
        assert proc.stdout is not None and "http://127.0.0.1:" in proc.stdout.readline()
        proc.terminate()
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # a clean exit through the handler, not a kill
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# -- corpus content ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("when", "licence"),
    [((2010, 7, 19), "CC BY-SA 2.5"), ((2011, 4, 7, 23, 59), "CC BY-SA 2.5"), ((2011, 4, 8), "CC BY-SA 3.0"),
     ((2018, 5, 1, 23, 59), "CC BY-SA 3.0"), ((2018, 5, 2), "CC BY-SA 4.0"), ((2024, 1, 1), "CC BY-SA 4.0")],
)
def test_content_license_by_creation_date(when: tuple[int, ...], licence: str) -> None:
    assert content_license(int(datetime(*when, tzinfo=timezone.utc).timestamp())) == licence


@pytest.mark.parametrize(
    ("title", "slug"),
    [("What is the intuition behind PCA?", "what-is-the-intuition-behind-pca"),
     ("Bias & variance of $R^2$", "bias-variance-of-r-2"), ("Cramér–Rao bound", "cramer-rao-bound"), ("???", "question"),
     ("Łukasz Søren", "lukasz-soren"), ("p < 0.05 — really…", "p-0-05-really")],
)
def test_slugify(title: str, slug: str) -> None:
    assert slugify(title) == slug


@pytest.fixture(scope="module")
def first_2000() -> list[dict[str, object]]:
    return [SampleCorpus(2000, seed=0).question(r) for r in range(2000)]


FEATURES = {
    "pre_code": r"<pre[^>]*><code>", "inline_code": r"(?<!>)<code>", "math_inline": r"(?<!\$)\$[^$\n]+\$(?!\$)",
    "math_display": r"\$\$[^$]+\$\$", "ul": r"<ul>", "ol": r"<ol>", "li": r"<li>", "blockquote": r"<blockquote>",
    "link": r'<a href="https?://', "img": r"<img src=", "table": r"<table", "strong": r"<strong>", "em": r"<em>",
    "h2": r"<h2>", "hr": r"<hr />", "entity_lt": r"&lt;", "entity_amp": r"&amp;", "entity_gt": r"&gt;",
    "typographic_quotes": "[\u201c\u201d\u2019]", "dashes": "[\u2013\u2014]", "nbsp": "\u00a0", "ellipsis": "\u2026",
    "greek": "[σμ]", "accented": "[éÉöüäåøł]",
}


def test_corpus_has_every_html_feature(first_2000: list[dict[str, object]]) -> None:
    bodies = [str(q["body"]) for q in first_2000] + [str(a["body"]) for q in first_2000 for a in q["answers"]]  # type: ignore[attr-defined]
    counts = {name: sum(1 for b in bodies if re.search(rx, b)) for name, rx in FEATURES.items()}
    missing = {k: v for k, v in counts.items() if v < 10}
    assert not missing, f"too few posts with these features: {missing} (all counts: {counts})"
    with_code = sum(1 for q in first_2000 if "<pre" in str(q["body"]) or any("<pre" in a["body"] for a in q["answers"]))  # type: ignore[attr-defined]
    assert 0.08 < with_code / 2000 < 0.25


def test_old_duplicates_carry_the_notice_stack_exchange_edited_into_their_body(first_2000: list[dict[str, object]]) -> None:
    """As on the real site until 2013: the cleaner's rule 2 has to remove it (and counts it)."""
    from cv_pipeline.curation.cleaner import CleaningConfig, _convert

    noticed = [q for q in first_2000 if "Possible Duplicate:" in str(q["body"])]
    assert len(noticed) >= 3
    titles = {q["question_id"]: q["title"] for q in first_2000}
    for q in noticed:
        assert q["closed_reason"] == "Duplicate" and q["creation_date"] < datetime(2013, 6, 1, tzinfo=timezone.utc).timestamp()
        body = str(q["body"])
        assert body.startswith("<blockquote>\n  <p><strong>Possible Duplicate:</strong><br>")
        target = int(body.split("/questions/")[1].split("/")[0])
        if target in titles:  # the link names the other question by its own title
            assert f">{html.escape(str(titles[target]), quote=False)}</a>" in body
        cleaned = _convert(body, CleaningConfig())
        assert cleaned.notices_removed == 1 and "Possible Duplicate" not in cleaned.text
    assert all("Possible Duplicate" not in str(q["body"]) for q in first_2000 if q.get("closed_reason") != "Duplicate")


def test_corpus_metadata_is_realistic(first_2000: list[dict[str, object]]) -> None:
    qs = first_2000
    qids = [q["question_id"] for q in qs]
    aids = [a["answer_id"] for q in qs for a in q["answers"]]  # type: ignore[attr-defined]
    assert len(set(qids)) == len(qids) and len(set(aids)) == len(aids) and not set(qids) & set(aids)
    unanswered = sum(1 for q in qs if not q["answers"])
    assert 0.02 < unanswered / len(qs) < 0.09
    assert max(len(q["answers"]) for q in qs) == 6  # type: ignore[arg-type]
    assert sum("closed_date" in q and "closed_reason" in q for q in qs) > 20
    assert sum("locked_date" in q for q in qs) > 5 and sum("community_owned_date" in q for q in qs) > 20
    accepted_not_top = 0
    for q in qs:
        answers = q["answers"]
        accepted = [a for a in answers if a["is_accepted"]]  # type: ignore[attr-defined, index]
        assert len(accepted) <= 1 and q.get("accepted_answer_id") == (accepted[0]["answer_id"] if accepted else None)
        if accepted and accepted[0]["score"] < max(a["score"] for a in answers):  # type: ignore[attr-defined, index]
            accepted_not_top += 1
        assert q["answer_count"] == len(answers)  # type: ignore[arg-type]
        assert 1 <= len(q["tags"]) <= 5  # type: ignore[arg-type]
        assert re.fullmatch(rf"https://stats\.stackexchange\.com/questions/{q['question_id']}/[a-z0-9-]+", str(q["link"]))
        assert q["content_license"] == content_license(int(q["creation_date"]))  # type: ignore[arg-type]
        assert all(a["creation_date"] >= q["creation_date"] for a in answers)  # type: ignore[attr-defined, index]
    assert accepted_not_top > 10
    licences = Counter(q["content_license"] for q in qs)
    assert set(licences) == {"CC BY-SA 2.5", "CC BY-SA 3.0", "CC BY-SA 4.0"}
    owners = [q["owner"] for q in qs]
    assert all("display_name" in o for o in owners)  # type: ignore[operator]
    assert sum("user_id" in o for o in owners) > 0.9 * len(owners)  # type: ignore[operator]
    assert any(o.get("user_type") == "does_not_exist" and "user_id" not in o for o in owners)  # type: ignore[attr-defined]


@pytest.mark.parametrize(("n", "seed"), [(0, 0), (100_004, 0), (10, -1)])
def test_corpus_rejects_bad_sizes(n: int, seed: int) -> None:
    with pytest.raises(ValueError, match="n_questions|seed"):
        SampleCorpus(n, seed)
