"""Properties a cleaned pair and a chat dataset must have. Each returns the offending rows (empty = ok)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# A tag-like token: "<p", "</div", "<br/>", "<!--"; MathJax such as "$a<b$" has no letter right after "<".
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?>|<!--")
_NOTICE = re.compile(r"(This question already has answers? here|Closed\.\s+This question|Want to improve this question\?)", re.I)


def html_left(text: str) -> bool:
    return bool(_TAG.search(text))


def rows_with_markup(rows: Iterable[dict], fields: tuple[str, ...] = ("question", "answer")) -> list[int]:
    return [r["question_id"] for r in rows if any(html_left(r[f]) or _NOTICE.search(r[f]) for f in fields)]


def rows_with_empty_text(rows: Iterable[dict], fields: tuple[str, ...] = ("question", "answer")) -> list[int]:
    return [r["question_id"] for r in rows if any(not (r.get(f) or "").strip() for f in fields)]


def rows_without_license(rows: Iterable[dict]) -> list[int]:
    return [r["question_id"] for r in rows if not (r.get("license") or "").strip()]


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
