"""Properties a cleaned pair and a chat dataset must have. Each returns the offending rows (empty = ok)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

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
_TAG = re.compile(r"</?(" + "|".join(sorted(_ELEMENTS, key=len, reverse=True)) + r")(?:\s[^<>]*)?/?>|<!--", re.I)
# MathJax is kept verbatim (rule 3), so "$T<c \mid H_0$ ... $T>c$" is text: blank math out before looking.
_MATH = re.compile(r"\$\$.*?\$\$|\$[^$]*\$", re.S)
# Text of the notices rule 2 removes, where a notice puts it: at the start of a line (a page's closed notice
# is blocks of its own; the duplicate notice's later wordings end with their colon). A blocking check must not
# trip on a post that says in passing "my last question was closed. This question ...".
_NOTICE = re.compile(
    r"^(?:Closed\.\s+This question|Want to improve this question\?"
    r"|This question (?:may )?already ha(?:s|ve) (?:an )?answers? here:)",
    re.M,
)


def markup_tokens(text: str) -> list[str]:
    """Tag-like tokens left in cleaned text, outside MathJax: the element names (or "!--")."""
    return [m.group(1).lower() if m.group(1) else "!--" for m in _TAG.finditer(_MATH.sub(" ", text))]


def html_left(text: str) -> bool:
    return bool(markup_tokens(text))


def _escaped_in(name: str, raw_lower: str) -> bool:
    """Whether the post's lower-cased HTML writes "<name" as text (escaped), e.g. `<code>&lt;br&gt;</code>`."""
    return any(f"{lt}{name}" in raw_lower for lt in ("&lt;", "&#60;", "&#x3c;", "&#x003c;"))


def rows_with_markup(
    rows: Iterable[dict],
    fields: tuple[str, ...] = ("question", "answer"),
    raw_html: Callable[[list[int]], dict[int, str]] | None = None,
) -> list[int]:
    """Rows with notice text, or with a tag-like token the cleaner should have removed.

    Text can hold a tag legitimately: a post that writes `&lt;br&gt;` (in inline code, say) shows
    "<br>". Given ``raw_html`` (question ids -> the pair's raw HTML, asked only for suspects), a
    token the raw HTML writes escaped is excused; a real tag left over never is.
    """
    bad: list[int] = []
    suspects: dict[int, set[str]] = {}
    for r in rows:
        texts = [r[f] for f in fields]
        if any(_NOTICE.search(t) for t in texts):
            bad.append(r["question_id"])
            continue
        tokens = {tok for t in texts for tok in markup_tokens(t)}
        if tokens:
            suspects[r["question_id"]] = tokens
    sources = raw_html(sorted(suspects)) if suspects and raw_html else {}
    for qid, tokens in suspects.items():
        raw = sources.get(qid)
        raw_lower = raw.lower() if raw is not None else None
        if raw_lower is None or not all(_escaped_in(tok, raw_lower) for tok in tokens):
            bad.append(qid)
    return bad


def rows_with_empty_text(rows: Iterable[dict], fields: tuple[str, ...] = ("question", "answer")) -> list[int]:
    return [r["question_id"] for r in rows if any(not (r.get(f) or "").strip() for f in fields)]


def rows_without_attribution(rows: Iterable[dict], fields: tuple[str, ...] = ("license", "answer_license")) -> list[int]:
    """Rows where any of the attribution ``fields`` (by default the question's and the answer's licence) is blank,
    or "unknown" (what `infer_license` says of a post with neither a licence nor a creation date): such a row
    cannot be attributed as CC BY-SA requires."""
    return [r["question_id"] for r in rows if not all(_known(r.get(f)) for f in fields)]


def _known(value: object) -> bool:
    text = str(value or "").strip()
    return bool(text) and text.lower() != "unknown"


def bad_roles(rows: Iterable[dict]) -> list[int]:
    """Messages must alternate user, assistant, ... starting with the user, and none may be empty."""
    bad = []
    for r in rows:
        msgs = r["messages"]
        roles = [m["role"] for m in msgs]
        expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(msgs))]
        if not msgs or roles != expected or any(not m["content"].strip() for m in msgs):
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
    "chat_roles_alternate": "roles alternate, no empty message",
    "chat_splits_disjoint": "splits disjoint",
    "chat_rows_licensed": "licence and link of question and answer present",
    "chat_has_no_markup": "no markup",
}


def chat_dataset_problems(
    splits: dict[str, list[dict]],
    raw_html: Callable[[list[int]], dict[int, str]] | None = None,
    rules: Iterable[str] = tuple(CHAT_RULES),
) -> dict[str, list[int]]:
    """The question ids that break each of ``rules`` (names from CHAT_RULES) in a chat dataset's splits."""
    rows = [r for split_rows in splits.values() for r in split_rows]
    finders: dict[str, Callable[[], list[int]]] = {
        "chat_roles_alternate": lambda: [q for split_rows in splits.values() for q in bad_roles(split_rows)],
        "chat_splits_disjoint": lambda: ids_in_two_splits(splits),
        "chat_rows_licensed": lambda: rows_without_attribution(rows, ("license", "link", "answer_license", "answer_link")),
        "chat_has_no_markup": lambda: rows_with_markup(
            ({"question_id": r["question_id"], "question": r["messages"][0]["content"],
              "answer": r["messages"][-1]["content"]} for r in rows),
            raw_html=raw_html,
        ),
    }
    return {name: finders[name]() for name in rules}
