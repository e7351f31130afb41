"""Properties a cleaned pair and a chat dataset must have. Each returns the offending rows (empty = ok)."""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping

# HTML element names: "<b and c>" in "if a<b and c>d" looks like a tag, "<n>" or "List<T>" does not.
_ELEMENTS = (
    "a abbr acronym address area article aside audio b base basefont bdi bdo big blink blockquote body br "
    "button canvas caption center cite code col colgroup data datalist dd del details dfn dialog dir div dl dt "
    "em embed fieldset figcaption figure font footer form frame frameset h1 h2 h3 h4 h5 h6 head header hgroup "
    "hr html i iframe img input ins kbd label legend li link listing main map mark marquee math menu meta meter "
    "nav nobr noembed noframes noscript object ol optgroup option output p param picture plaintext pre "
    "progress q rp rt ruby s samp script search section select slot small source span strike strong style sub "
    "summary sup svg table tbody td template textarea tfoot th thead time title tr track tt u ul var video wbr "
    "xmp"
).split()
_NAMES = "|".join(sorted(_ELEMENTS, key=len, reverse=True))
_TAG = re.compile(r"</?(" + _NAMES + r")(?:\s[^<>]*)?/?>|<!--", re.I)
# MathJax is kept verbatim (rule 3), so "$T<c \mid H_0$ ... $T>c$" is text: without the raw HTML to judge by,
# math is blanked out before looking. An inline span stays within its paragraph, and "\$" is a dollar sign,
# so a price ("costs $5 ... $6") cannot hide a tag in the paragraphs between.
_MATH = re.compile(r"(?<!\\)\$\$.*?(?<!\\)\$\$|(?<!\\)\$(?:[^$\n]|\n(?!\s*\n))*?(?<!\\)\$", re.S)
# How a post's HTML writes "<name" as text (lower-cased): an escaped "<" (named, decimal or hex, with or
# without its ";"), or a fullwidth or small "<" that the ASCII normalisation turns into one; then the name,
# ended as a tag name ends in the text: by a space, "/", ">" or markup (a paragraph's end, a line break, the
# title's end all become spaces), so "&lt;p$" in "$n&lt;p$" is no escaped <p>, "n&lt;p</p>" is.
_ESCAPED_TAG = re.compile(
    r"(?:&lt;?|&#0*60;?|&#x0*3c;?|\uff1c|\ufe64)(?:(/?)(" + _NAMES + r")"
    r"(?=[\s/<>]|$|&gt|&#0*62|&#x0*3e|&nbsp|&#0*160|&#x0*a0|\uff1e|\ufe65)|(!--))"
)
# Text of the notices rule 2 removes, where a notice puts it: at the start of a line (a page's closed notice
# is blocks of its own; the duplicate notice's wordings end with their colon). A blocking check must not
# trip on a post that says in passing "my last question was closed. This question ...".
# A page's notices (class-marked elements the cleaner removes; never in API or dump bodies), in full enough
# wording that a post of one's own does not match:
_PAGE_NOTICE = re.compile(
    r"^(?:Closed\.\s+This question|Want to improve this (?:question|post)\?"
    r"|Locked\.\s+(?:This question and its answers are locked|Comments on this (?:question|answer) have been disabled)"
    r"|(?:Migrated\.\s+)?This question was migrated from .{1,100}? because it can be answered on)",
    re.M,
)
# The duplicate notice Stack Exchange edited into bodies, which the cleaner removes as the <blockquote> holding
# it: the same words written by the post's author outside a quote are the author's, and kept (excused below).
_QUOTED_NOTICE = re.compile(
    r"^(?:Possible Duplicates?:|This question (?:may )?already ha(?:s|ve) (?:an )?answers? here:)", re.M
)
_BLOCKQUOTE = re.compile(r"<blockquote\b.*?</blockquote\s*>", re.I | re.S)
_ANY_TAG = re.compile(r"<[^<>]*>")


def markup_tokens(text: str, blank_math: bool = True) -> list[str]:
    """Tag-like tokens left in cleaned text (outside MathJax unless ``blank_math`` is off): the element names (or "!--")."""
    return [m.group(1).lower() if m.group(1) else "!--" for m in _TAG.finditer(_MATH.sub(" ", text) if blank_math else text)]


def html_left(text: str) -> bool:
    return bool(markup_tokens(text))


def escaped_tokens(raw_html: str) -> Counter[str]:
    """How often the post's HTML writes each tag-like token as text (`<code>&lt;br&gt;</code>` shows "<br>")."""
    return Counter(m.group(2) or m.group(3) for m in _ESCAPED_TAG.finditer(raw_html.lower()))


def _unquoted_text(raw_html: str) -> str:
    """The post's text outside its quotes, whitespace collapsed (where the author's own words are)."""
    return " ".join(html.unescape(_ANY_TAG.sub(" ", _BLOCKQUOTE.sub(" ", raw_html))).split())


def _excused(tokens: Counter[str], notices: list[str], raw: str) -> bool:
    if notices:
        own_words = _unquoted_text(raw)  # once, however many notices
        if not all(notice in own_words for notice in notices):
            return False
    return not tokens - escaped_tokens(raw)


def rows_with_markup(
    rows: Iterable[dict],
    fields: tuple[str, ...] = ("question", "answer"),
    raw_html: Callable[[list[int]], Mapping[int, str | list[str]]] | None = None,
) -> list[int]:
    """Rows with notice text, or with a tag-like token the cleaner should have removed.

    Text can hold a tag legitimately: a post that writes `&lt;br&gt;` (in inline code, say) shows
    "<br>". Given ``raw_html`` (question ids -> the pair's raw HTML, or each copy's where the question
    was collected twice; asked only for suspects), a row's tokens are excused when the raw HTML of one
    copy writes each of them as text at least as often as the text shows it, math included (a "<" in
    MathJax is text, so it is escaped in the HTML too); a real tag left over never is, even beside an
    escaped one of the same name. The duplicate notice's words are excused where the author wrote
    them outside a quote; a page notice's never are. Without the raw HTML (or for a row whose raw HTML
    is not found), tokens inside MathJax are passed over and any other is a leftover.
    """
    bad: list[int] = []
    suspects: dict[int, tuple[list[str], Counter[str], list[str]]] = {}
    for r in rows:
        texts = [t for f in fields for t in (r[f] if isinstance(r[f], list) else [r[f]])]
        if any(_PAGE_NOTICE.search(t) for t in texts):
            bad.append(r["question_id"])
            continue
        notices = [" ".join(m.group(0).split()) for t in texts for m in _QUOTED_NOTICE.finditer(t)]
        if notices or any(_TAG.search(t) for t in texts):
            suspects[r["question_id"]] = (texts, Counter(tok for t in texts for tok in markup_tokens(t, blank_math=False)),
                                          notices)
    sources = raw_html(sorted(suspects)) if suspects and raw_html else {}
    for qid, (texts, tokens, notices) in suspects.items():
        found = sources.get(qid)
        copies = [found] if isinstance(found, str) else list(found or [])
        if not copies:  # nothing to excuse by: tokens in MathJax are text, the rest and any notice are not
            if notices or any(markup_tokens(t) for t in texts):  # each text on its own: no $$ pairs across two
                bad.append(qid)
        elif not any(_excused(tokens, notices, raw) for raw in copies):
            bad.append(qid)
    return bad


def rows_with_empty_text(rows: Iterable[dict], fields: tuple[str, ...] = ("question", "answer")) -> list[int]:
    return [r["question_id"] for r in rows if any(not (r.get(f) or "").strip() for f in fields)]


def rows_without_attribution(rows: Iterable[dict], fields: tuple[str, ...] = ("license", "answer_license")) -> list[int]:
    """Rows where any of the attribution ``fields`` (by default the question's and the answer's licence) is blank,
    or "unknown" (what `infer_license` says of a post with neither a licence nor a creation date), or, for a
    link field, not an absolute web address: such a row cannot be attributed as CC BY-SA requires."""
    return [r["question_id"] for r in rows if not all(_known(r.get(f), link=f.endswith("link")) for f in fields)]


_WEB_ADDRESS = re.compile(r"https?://[^/\s]+/\S")


def _known(value: object, link: bool = False) -> bool:
    text = str("" if value is None else value).strip()
    if link:
        return _WEB_ADDRESS.match(text) is not None
    return bool(text) and text.lower() != "unknown"


def bad_roles(rows: Iterable[dict]) -> list[int]:
    """A chat is user, assistant, ... and ends with the assistant (whose turn training learns); no message is empty."""
    bad = []
    for r in rows:
        msgs = r.get("messages") or []
        roles = [(m or {}).get("role") for m in msgs]
        expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(msgs))]
        if len(msgs) < 2 or len(msgs) % 2 or roles != expected or any(not (m.get("content") or "").strip() for m in msgs):
            bad.append(r["question_id"])
    return bad


def ids_in_two_splits(splits: dict[str, list[dict]]) -> list[int]:
    seen: dict[int, str] = {}
    clash = []
    for name, rows in splits.items():
        for r in rows:
            qid = r["question_id"]
            if seen.setdefault(qid, name) != name:
                clash.append(qid)
    return sorted(set(clash))


# The chat dataset's rules: the blocking checks' names and what each asserts. chat_dataset applies
# them to the rows it built before it replaces the dataset on disk; its checks apply them to the files.
CHAT_RULES = {
    "chat_roles_alternate": "user and assistant alternate, the assistant answers last, no empty message",
    "chat_splits_disjoint": "splits disjoint, the top subset drawn from train",
    "chat_rows_licensed": "licence and link of question and answer present",
    "chat_has_no_markup": "no markup or notice text in any message",
    "chat_no_code_block_posts": "no pair from a post with a code block",
}


def chat_dataset_problems(
    splits: dict[str, list[dict]],
    raw_html: Callable[[list[int]], Mapping[int, str | list[str]]] | None = None,
    rules: Iterable[str] = tuple(CHAT_RULES),
    top: list[dict] | None = None,
    code_block_posts: Callable[[list[int]], list[int]] | None = None,
) -> dict[str, list[int]]:
    """The question ids that break each of ``rules`` (names from CHAT_RULES) in a chat dataset's splits and its
    ``top`` subset.

    ``raw_html`` gives the raw HTML of suspect pairs (see rows_with_markup); ``code_block_posts`` answers which
    of the given question ids come from a post with a code block (rule 1 drops those pairs), and is needed
    for that rule.
    """
    top = top or []
    train = {r["question_id"]: r for r in splits.get("train", [])}
    # Every row once: a top row that is its train row as written is not judged again.
    rows = [r for split_rows in splits.values() for r in split_rows] + [r for r in top if train.get(r["question_id"]) != r]

    def all_messages(row: dict) -> dict:
        return {"question_id": row["question_id"], "messages": [(m or {}).get("content") or "" for m in row.get("messages") or []]}

    def code_blocks() -> list[int]:
        if code_block_posts is None:
            raise ValueError("chat_no_code_block_posts needs code_block_posts: how to look up the pairs' raw posts")
        return sorted(set(code_block_posts(sorted({r["question_id"] for r in rows}))))

    finders: dict[str, Callable[[], list[int]]] = {
        "chat_roles_alternate": lambda: sorted(set(bad_roles(rows))),
        "chat_splits_disjoint": lambda: sorted(set(ids_in_two_splits(splits)) | ({r["question_id"] for r in top} - train.keys())),
        "chat_rows_licensed": lambda: sorted(set(
            rows_without_attribution(rows, ("license", "link", "answer_license", "answer_link")))),
        "chat_has_no_markup": lambda: sorted(set(
            rows_with_markup(map(all_messages, rows), fields=("messages",), raw_html=raw_html))),
        "chat_no_code_block_posts": code_blocks,
    }
    return {name: finders[name]() for name in rules}
