"""A deterministic, generated Cross-Validated-like corpus of any size, built lazily per rank.

The question at rank ``r`` is a pure function of ``(seed, r)`` (not of the corpus size), so a
40,000-question corpus costs nothing up front and one page is generated in milliseconds. Items
are shaped like Stack Exchange API 2.3 question objects (with every field the server may emit;
the server's filter decides which ones go out) and carry an embedded ``answers`` list.
Titles and display names are plain text here; the server HTML-escapes them as the API does.
Bodies carry what the cleaner has to handle in real posts: code blocks, inline code and MathJax,
lists, tables, quotes, images, entities, typographic punctuation and, in old questions closed as
duplicates, the "Possible Duplicate" quote Stack Exchange edited into the body.
"""

from __future__ import annotations

import hashlib
import html
import random
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from cv_pipeline.sources.sample_site import vocabulary as V

SITE_URL = "https://stats.stackexchange.com"

#: Question ids come from an affine bijection on Z_P, so they are distinct, invertible and
#: look like real post ids (CV's reach ~700k). It also caps the corpus size at P.
_P = 100_003
MAX_QUESTIONS = _P
#: A question owns the post ids 7h+1 (itself) and 7h+2 .. 7h+7 (up to six answers), so answer
#: ids never collide with question ids or with each other.
_IDS_PER_THREAD = 7
MAX_ANSWERS = 6

_LAUNCH = int(datetime(2010, 7, 19, 19, 0, tzinfo=timezone.utc).timestamp())
#: A fixed "now" keeps the corpus independent of the wall clock.
_END = int(datetime(2025, 3, 31, tzinfo=timezone.utc).timestamp())
_CC25_UNTIL = int(datetime(2011, 4, 8, tzinfo=timezone.utc).timestamp())
_CC30_UNTIL = int(datetime(2018, 5, 2, tzinfo=timezone.utc).timestamp())
_DAY = 86_400
# Until about then, closing a question as a duplicate edited a "Possible Duplicate" quote into its body.
_DUPLICATE_NOTICE_IN_BODY_UNTIL = int(datetime(2013, 6, 1, tzinfo=timezone.utc).timestamp())


def content_license(created: int) -> str:
    """The CC BY-SA version Stack Exchange applies to a post created at ``created`` (epoch s, UTC)."""
    if created < _CC25_UNTIL:
        return "CC BY-SA 2.5"
    if created < _CC30_UNTIL:
        return "CC BY-SA 3.0"
    return "CC BY-SA 4.0"


#: Letters NFKD does not decompose into an ASCII base letter.
_FOLD = str.maketrans({"ł": "l", "ø": "o", "đ": "d", "ß": "ss", "æ": "ae", "œ": "oe", "ı": "i"})


def slugify(title: str, max_len: int = 80) -> str:
    """URL slug the way the site builds one: ASCII-folded, lowercase, hyphen-separated, cut at a word."""
    # Separators (dashes, spaces, punctuation) first, so "Cramér–Rao" keeps its two words.
    spaced = re.sub(r"[^\w]+", " ", title.lower().translate(_FOLD))
    folded = unicodedata.normalize("NFKD", spaced).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", folded).strip("-")
    if len(slug) > max_len:
        slug = slug[:max_len].rsplit("-", 1)[0]
    return slug or "question"


def _seed64(seed: int, *parts: object) -> int:
    # A hash (not seed+rank arithmetic) so neighbouring ranks and seeds get unrelated streams.
    digest = hashlib.blake2b(":".join(map(str, (seed, *parts))).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def _rng(seed: int, *parts: object) -> random.Random:
    return random.Random(_seed64(seed, *parts))


_M64 = (1 << 64) - 1


class _Stream:
    """SplitMix64: a few integer ops per draw and no state table to seed, so the per-thread
    shape (which /info computes for every question) stays cheap where random.Random is not."""

    __slots__ = ("state",)

    def __init__(self, seed: int):
        self.state = seed & _M64

    def random(self) -> float:
        self.state = z = (self.state + 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return ((z ^ (z >> 31)) >> 11) * 2.0**-53

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()

    def weighted(self, values: range, weights: tuple[int, ...]) -> int:
        x, acc = self.random() * sum(weights), 0
        for v, w in zip(values, weights):
            acc += w
            if x < acc:
                return v
        return values[-1]

    def shuffle(self, items: list[int]) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.randint(0, i)
            items[i], items[j] = items[j], items[i]


@dataclass(frozen=True)
class _Shape:
    """The cheap part of a thread (no text), enough for site-wide totals."""

    answer_scores: tuple[int, ...]  # in answer creation order
    accepted: int | None  # index into answer_scores
    closed: bool
    locked: bool
    community: bool


class SampleCorpus:
    """``n_questions`` generated questions ranked by score; ``question(rank)`` builds one on demand."""

    def __init__(self, n_questions: int, seed: int = 0):
        if not isinstance(n_questions, int) or not 0 < n_questions <= MAX_QUESTIONS:
            raise ValueError(
                f"n_questions={n_questions!r}: the sample corpus holds 1 to {MAX_QUESTIONS:,} questions; pass a size in that range"
            )
        if not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed={seed!r}: pass a non-negative integer seed")
        self.n_questions = n_questions
        self.seed = seed
        rng = _rng(seed, "corpus")
        self._mul = rng.randrange(1, _P)
        self._add = rng.randrange(_P)
        self._mul_inv = pow(self._mul, -1, _P)
        self._top_score = rng.randrange(900, 1300)

    def __len__(self) -> int:
        return self.n_questions

    # -- ids and ranking -------------------------------------------------------------------
    def _slot(self, rank: int) -> int:
        return (self._mul * rank + self._add) % _P

    def question_id(self, rank: int) -> int:
        self._check_rank(rank)
        return _IDS_PER_THREAD * self._slot(rank) + 1

    def rank_of(self, question_id: int) -> int | None:
        """The rank of ``question_id``, or None when no question in this corpus has that id."""
        if question_id < 1 or (question_id - 1) % _IDS_PER_THREAD:
            return None
        slot = (question_id - 1) // _IDS_PER_THREAD
        if slot >= _P:
            return None
        rank = ((slot - self._add) * self._mul_inv) % _P
        return rank if rank < self.n_questions else None

    def score(self, rank: int) -> int:
        """Non-increasing in rank (a power law, with ties further down), like CV's vote ranking."""
        return int(self._top_score * (1 + rank / 6) ** -0.55)

    def _created(self, rank: int) -> int:
        # Monotone in the id slot, so lower ids are older, as on the real site; the power skews
        # the top-voted questions towards the site's early years.
        frac = self._slot(rank) / _P
        return _LAUNCH + int(frac**1.5 * (_END - 400 * _DAY - _LAUNCH))

    def _check_rank(self, rank: int) -> None:
        if not 0 <= rank < self.n_questions:
            raise IndexError(f"rank {rank} is outside this corpus (0 to {self.n_questions - 1})")

    # -- thread shape ----------------------------------------------------------------------
    def shape(self, rank: int) -> _Shape:
        self._check_rank(rank)
        rng = _Stream(_seed64(self.seed, rank, "shape"))
        closed = rng.random() < 0.04
        locked = rng.random() < 0.01
        community = rng.random() < 0.03
        if rng.random() < 0.05:
            n_answers = 0
        else:
            n_answers = rng.weighted(range(1, MAX_ANSWERS + 1), (30, 28, 18, 12, 7, 5))
        q_score = self.score(rank)
        best = max(0, round(q_score * rng.uniform(0.3, 1.8)))
        scores = [best]
        for _ in range(n_answers - 1):
            s = -rng.randint(1, 3) if rng.random() < 0.08 else round(best * rng.uniform(0.02, 0.8))
            scores.append(s)
        scores = scores[:n_answers]
        rng.shuffle(scores)  # the first answer is not always the best one
        accepted = None
        if n_answers and not community and rng.random() < 0.6:
            top = max(range(n_answers), key=lambda i: scores[i])
            # Often, not always, the asker accepts the top-voted answer.
            others = [i for i in range(n_answers) if i != top]
            accepted = top if not others or rng.random() < 0.7 else others[rng.randint(0, len(others) - 1)]
        return _Shape(tuple(scores), accepted, closed, locked, community)

    # -- full items ------------------------------------------------------------------------
    def question(self, rank: int) -> dict[str, Any]:
        """The API-shaped question at ``rank`` with all fields and its ``answers`` (plain title)."""
        shape = self.shape(rank)
        rng, writer = self._writer(rank)
        qid = self.question_id(rank)
        created = self._created(rank)
        title = writer.title()
        score = self.score(rank)
        owner_id = rng.randrange(1, 400_000)

        answers = []
        for i, a_score in enumerate(shape.answer_scores):
            # Most answers come within days; a few years later.
            delay = int(rng.expovariate(1 / (2 * _DAY))) if rng.random() < 0.8 else rng.randrange(_DAY, 1500 * _DAY)
            a_created = min(created + 600 + delay, _END - _DAY)
            answer: dict[str, Any] = {
                "owner": self._owner(rng.randrange(1, 400_000)),
                "is_accepted": shape.accepted == i,
                "score": a_score,
                "last_activity_date": a_created,
                "creation_date": a_created,
                "answer_id": qid + 1 + i,
                "question_id": qid,
                "content_license": content_license(a_created),
                "body": writer.answer_body(created < _LAUNCH + 3 * 365 * _DAY),
            }
            if rng.random() < 0.3:
                answer["last_edit_date"] = answer["last_activity_date"] = rng.randrange(a_created, _END)
            if shape.community:
                answer["community_owned_date"] = a_created
            answers.append(answer)

        down = rng.randrange(0, 2 + score // 20)
        item: dict[str, Any] = {
            "tags": writer.tags(),
            "owner": self._owner(owner_id),
            "is_answered": shape.accepted is not None or any(s > 0 for s in shape.answer_scores),
            "view_count": score * rng.randrange(150, 900) + rng.randrange(40, 400),
            "answer_count": len(answers),
            "score": score,
            "up_vote_count": score + down,
            "down_vote_count": down,
            "creation_date": created,
            "question_id": qid,
            "content_license": content_license(created),
            "link": f"{SITE_URL}/questions/{qid}/{slugify(title)}",
            "title": title,
            "body": writer.question_body(created < _LAUNCH + 3 * 365 * _DAY),
        }
        if shape.accepted is not None:
            item["accepted_answer_id"] = qid + 1 + shape.accepted
        if rng.random() < 0.5:
            item["last_edit_date"] = rng.randrange(created, _END)
        if shape.closed:
            item["closed_date"] = created + rng.randrange(3_600, 20 * _DAY)
            item["closed_reason"] = rng.choice(V.CLOSED_REASONS)
            if item["closed_reason"] == "Duplicate" and created < _DUPLICATE_NOTICE_IN_BODY_UNTIL:
                item["body"] = self._duplicate_notice(rank) + item["body"]
        if shape.locked:
            item["locked_date"] = created + rng.randrange(30 * _DAY, 2000 * _DAY)
        if shape.community:
            item["community_owned_date"] = created + (0 if rng.random() < 0.5 else rng.randrange(_DAY, 900 * _DAY))
        item["last_activity_date"] = max(
            [created, item.get("last_edit_date", 0)] + [a["last_activity_date"] for a in answers]
        )
        item["answers"] = answers
        return item

    def _writer(self, rank: int) -> tuple[random.Random, _Writer]:
        """The thread's text rng and its writer (which draws the thread's topic first)."""
        rng = _rng(self.seed, rank, "text")
        return rng, _Writer(rng, rng.choice(V.TOPICS))

    def _duplicate_notice(self, rank: int) -> str:
        """The quote Stack Exchange edited into the top of an old question closed as a duplicate of another."""
        target = _rng(self.seed, rank, "duplicate").randrange(self.n_questions)
        if target == rank:
            target = (rank + 1) % self.n_questions
        title = self._writer(target)[1].title()  # the target's own title: its writer draws it first
        qid = self.question_id(target)
        return (
            f'<blockquote>\n  <p><strong>Possible Duplicate:</strong><br>\n  <a href="{SITE_URL}/questions/{qid}/'
            f'{slugify(title)}">{html.escape(title, quote=False)}</a>  </p>\n</blockquote>\n\n\n\n'
        )

    def _owner(self, user_id: int) -> dict[str, Any]:
        """A user is a pure function of (seed, user_id), so one id always shows the same name."""
        rng = _rng(self.seed, "user", user_id)
        if rng.random() < 0.02:
            # Deleted accounts: the real API sends no user_id, only a placeholder name.
            return {"user_type": "does_not_exist", "display_name": f"user{user_id}"}
        if rng.random() < 0.15:
            name = f"user{user_id}"
        else:
            first = rng.choice(V.FIRST_NAMES)
            name = first if rng.random() < 0.2 else f"{first} {rng.choice(V.LAST_NAMES)}"
        avatar = f"{rng.getrandbits(128):032x}"
        owner: dict[str, Any] = {
            "account_id": user_id * 3 + 17,
            "reputation": int(rng.paretovariate(0.9) * 10),
            "user_id": user_id,
            "user_type": "registered",
            "profile_image": f"https://www.gravatar.com/avatar/{avatar}?s=256&d=identicon&r=PG",
            "display_name": name,
            "link": f"{SITE_URL}/users/{user_id}/{slugify(name)}",
        }
        if rng.random() < 0.4:
            owner["accept_rate"] = rng.randrange(0, 101)
        return owner


class _Slots(dict):  # type: ignore[type-arg]
    """Template slots, each drawn only when a template asks for it (drawing all is the slow part)."""

    def __init__(self, rng: random.Random, topic: V.Topic, plain: bool = False):
        super().__init__()
        self.rng, self.topic, self.plain = rng, topic, plain

    def _html(self, text: str) -> str:
        return text if self.plain else html.escape(text, quote=False)

    def __missing__(self, name: str) -> str:
        r, t = self.rng, self.topic
        if name in ("thing", "thing2", "Thing"):
            a, b = r.sample(t.things, 2)
            self.update(thing=self._html(a), thing2=self._html(b), Thing=self._html(a[0].upper() + a[1:]))
        elif name in ("qty", "qty2", "qty_noun"):
            a, b = r.sample(t.quantities, 2)  # HTML already; titles want it without markup
            if self.plain:
                a, b = (html.unescape(re.sub(r"<[^>]+>", "", x)) for x in (a, b))
            self.update(qty=a, qty2=b, qty_noun=a.removeprefix("the "))
        elif name == "link":
            url, text = r.choice(t.links)
            self[name] = f'<a href="{url}" rel="nofollow noreferrer">{html.escape(text, quote=False)}</a>'
        else:
            self[name] = self._simple(name)
        return self[name]

    def _simple(self, name: str) -> str:
        r = self.rng
        if name == "math":
            return r.choice(self.topic.math_inline)
        if name == "n":
            return str(r.choice((12, 20, 35, 48, 60, 150, 240, 1000, 12_000)))
        if name == "n2":
            return str(r.choice((5, 10, 20, 30)))
        if name == "num":
            return f"{r.uniform(-3, 30):.3g}"
        if name == "num2":
            return f"{r.uniform(0.01, 9):.2f}"
        pools = {"units": V.UNITS, "adj": V.ADJECTIVES, "assumption": V.ASSUMPTIONS, "software": V.SOFTWARE,
                 "name": V.CITED}
        if name not in pools:
            raise KeyError(f"template slot {{{name}}} is not defined")
        return r.choice(pools[name])


class _Writer:
    """Builds the text of one thread from a topic; every choice comes from the thread's rng."""

    def __init__(self, rng: random.Random, topic: V.Topic):
        self.rng = rng
        self.topic = topic
        # Some authors type typographic apostrophes; the cleaner has to normalise them.
        self.smart_quotes = rng.random() < 0.2

    # -- slots ----------------------------------------------------------------------------
    def _slots(self) -> _Slots:
        return _Slots(self.rng, self.topic)

    def _fill(self, template: str) -> str:
        text = template.format_map(self._slots())
        if self.smart_quotes:
            # Only apostrophes between letters: attribute quotes are never touched.
            text = re.sub(r"(?<=\w)'(?=\w)", "\u2019", text)
        return text

    def title(self) -> str:
        return self.rng.choice(V.TITLES).format_map(_Slots(self.rng, self.topic, plain=True))

    def tags(self) -> list[str]:
        k = self.rng.choices((1, 2, 3, 4, 5), weights=(10, 25, 30, 20, 15))[0]
        return self.rng.sample(self.topic.tags, min(k, len(self.topic.tags)))

    # -- blocks (HTML) --------------------------------------------------------------------
    def _p(self, *templates: str) -> str:
        return "<p>" + " ".join(self._fill(t) for t in templates) + "</p>"

    def _code_block(self) -> str:
        raw = self.rng.choice(self.topic.code)
        code = html.escape(raw, quote=False)
        lang = "lang-r" if "<-" in raw or "library(" in raw else "lang-py"
        if self.rng.random() < 0.5:
            return f"<pre><code>{code}\n</code></pre>"
        return f'<pre class="{lang} prettyprint-override"><code>{code}\n</code></pre>'

    def _inline_code(self) -> str:
        line = self.rng.choice(self.topic.code).splitlines()[0].strip()
        return f"I used <code>{html.escape(line, quote=False)}</code> for this."

    def _display_math(self) -> str:
        return f"<p>$${self.rng.choice(self.topic.math_display)}$$</p>"

    def _list(self) -> str:
        tag = self.rng.choice(("ul", "ol"))
        items = self.rng.sample(V.ANSWER_BODIES + V.QUESTION_DETAILS, self.rng.randint(2, 4))
        return f"<{tag}>\n" + "\n".join(f"<li>{self._fill(i)}</li>" for i in items) + f"\n</{tag}>"

    def _blockquote(self) -> str:
        return "<blockquote>\n" + self._p(self.rng.choice(V.ANSWER_BODIES)) + "\n</blockquote>"

    def _image(self) -> str:
        name = "".join(self.rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghjkmnpqrstuvwxyz23456789") for _ in range(5))
        url = f"https://i.sstatic.net/{name}.png"
        alt = self.rng.choice(("enter image description here", "Residuals vs fitted", "QQ plot"))
        return f'<p><a href="{url}" rel="nofollow noreferrer"><img src="{url}" alt="{alt}" /></a></p>'

    def _table(self) -> str:
        header = self.rng.choice(V.TABLE_HEADERS)
        rows = []
        for i in range(self.rng.randint(2, 4)):
            cells = [f"{chr(65 + i)}"] + [f"{self.rng.uniform(0, 100):.1f}" for _ in header[1:]]
            rows.append("<tr>\n" + "\n".join(f"<td>{c}</td>" for c in cells) + "\n</tr>")
        head = "<tr>\n" + "\n".join(f"<th>{html.escape(h)}</th>" for h in header) + "\n</tr>"
        return (
            '<div class="s-table-container"><table class="s-table">\n<thead>\n' + head
            + "\n</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table></div>"
        )

    def _nbsp_note(self) -> str:
        return f"<p>See Figure\u00a01 and Table\u00a02 of the paper (pp.\u00a0{self.rng.randint(3, 40)}–{self.rng.randint(41, 90)})…</p>"

    # -- whole bodies ---------------------------------------------------------------------
    def question_body(self, old_style: bool) -> str:
        r = self.rng
        blocks = [self._p(r.choice(V.QUESTION_OPENERS), r.choice(V.QUESTION_DETAILS))]
        if r.random() < 0.25:
            blocks.append(f"<p>{self._fill(r.choice(V.QUESTION_DETAILS))} {self._inline_code()}</p>")
        if r.random() < 0.2:
            blocks.append(self._display_math())
        if r.random() < 0.08:
            blocks.append(self._code_block())
        if r.random() < 0.06:
            blocks.append(self._image())
        if r.random() < 0.04:
            blocks.append(self._table())
        if r.random() < 0.12:
            blocks.append(self._list())
        if r.random() < 0.08:
            blocks.append(self._blockquote())
        if r.random() < 0.08:
            blocks.append(self._nbsp_note())
        blocks.append(self._p(r.choice(V.QUESTION_DETAILS), r.choice(V.QUESTION_ASKS)))
        return ("\n\n" if old_style else "\n").join(blocks) + "\n"

    def answer_body(self, old_style: bool) -> str:
        r = self.rng
        headed = r.random() < 0.12
        blocks = ["<h2>Short answer</h2>"] if headed else []
        blocks.append(self._p(r.choice(V.ANSWER_LEADS)))
        if headed:
            blocks.append("<h2>Details</h2>")
        for template in r.sample(V.ANSWER_BODIES, r.randint(1, 3)):
            blocks.append(self._p(template))
        if r.random() < 0.3:
            blocks.append(self._display_math())
        if r.random() < 0.03:
            blocks.append(self._code_block())
        if r.random() < 0.15:
            blocks.append(self._list())
        if r.random() < 0.08:
            blocks.append(self._blockquote())
        if r.random() < 0.05:
            blocks.append("<hr />")
        if r.random() < 0.03:
            blocks.append(self._image())
        if r.random() < 0.02:
            blocks.append(self._table())
        if r.random() < 0.6:
            blocks.append(self._p(r.choice(V.ANSWER_CLOSERS)))
        return ("\n\n" if old_style else "\n").join(blocks) + "\n"
