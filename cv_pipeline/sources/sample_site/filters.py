"""Stack Exchange API filters for the sample site: which fields a response may carry.

A created filter is an opaque string that *encodes* its field set (a bitmask plus a checksum),
so it stays valid across server restarts and instances, as real filters are permanent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

# Append-only: a field's position is its bit in every filter string ever handed out.
WRAPPER = (".backoff", ".error_id", ".error_message", ".error_name", ".has_more", ".items", ".page",
           ".page_size", ".quota_max", ".quota_remaining", ".total", ".type")
QUESTION = tuple(f"question.{f}" for f in (
    "accepted_answer_id", "answer_count", "answers", "body", "closed_date", "closed_reason",
    "community_owned_date", "content_license", "creation_date", "down_vote_count", "is_answered",
    "last_activity_date", "last_edit_date", "link", "locked_date", "owner", "question_id", "score", "tags",
    "title", "up_vote_count", "view_count"))
ANSWER = tuple(f"answer.{f}" for f in (
    "answer_id", "body", "community_owned_date", "content_license", "creation_date", "is_accepted",
    "last_activity_date", "last_edit_date", "link", "owner", "question_id", "score"))
SHALLOW_USER = tuple(f"shallow_user.{f}" for f in (
    "accept_rate", "account_id", "display_name", "link", "profile_image", "reputation", "user_id", "user_type"))
UNIVERSE = WRAPPER + QUESTION + ANSWER + SHALLOW_USER
_INDEX = {name: i for i, name in enumerate(UNIVERSE)}

_NOT_DEFAULT = {".page", ".page_size", ".total", ".type", "question.answers", "question.body",
                "question.down_vote_count", "question.up_vote_count", "answer.body", "answer.link"}
_DEFAULT = frozenset(f for f in UNIVERSE if f not in _NOT_DEFAULT)
BUILTIN: dict[str, frozenset[str]] = {
    "default": _DEFAULT,
    "withbody": _DEFAULT | {"question.body", "answer.body"},
    "none": frozenset(),
    "total": frozenset({".total"}),
}

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz()*-._"


class FilterError(ValueError):
    """A filter name or field list the site does not know; the message says which."""


@dataclass(frozen=True)
class Filter:
    fields: frozenset[str]
    unsafe: bool = False

    def has(self, field: str) -> bool:
        return field in self.fields


def _checksum(body: str) -> str:
    h = int.from_bytes(hashlib.blake2b(f"cv-sample-filter:{body}".encode(), digest_size=4).digest(), "big")
    return _ALPHABET[h % len(_ALPHABET)] + _ALPHABET[(h // len(_ALPHABET)) % len(_ALPHABET)]


def encode(f: Filter) -> str:
    mask = int(f.unsafe)
    for name in f.fields:
        mask |= 1 << (_INDEX[name] + 1)
    digits = []
    while mask:
        mask, d = divmod(mask, len(_ALPHABET))
        digits.append(_ALPHABET[d])
    body = "".join(reversed(digits)) or "0"
    return "!" + body + _checksum(body)


def decode(name: str) -> Filter:
    """A built-in name or a string from :func:`encode`; anything else raises FilterError."""
    if name in BUILTIN:
        return Filter(BUILTIN[name])
    body, check = name[1:-2], name[-2:]
    if not name.startswith("!") or not body or _checksum(body) != check or any(c not in _ALPHABET for c in body):
        raise FilterError(f"filter `{name[:64]}` is not a valid filter; create one with /filters/create")
    mask = 0
    for c in body:
        mask = mask * len(_ALPHABET) + _ALPHABET.index(c)
    if mask >> (len(UNIVERSE) + 1):
        raise FilterError(f"filter `{name[:64]}` is not a valid filter; create one with /filters/create")
    fields = frozenset(n for n, i in _INDEX.items() if mask >> (i + 1) & 1)
    return Filter(fields, unsafe=bool(mask & 1))


def _parse_fields(spec: str, param: str) -> set[str]:
    names = {s.strip() for s in spec.split(";") if s.strip()}
    unknown = sorted(n for n in names if n not in _INDEX)
    if unknown:
        raise FilterError(f"`{param}` has fields the sample site does not serve: {', '.join(unknown)[:200]}")
    return names


def create(include: str = "", exclude: str = "", base: str = "default", unsafe: bool = False) -> Filter:
    """What ``/filters/create`` does: base fields, plus ``include``, minus ``exclude`` (';'-separated)."""
    if base not in BUILTIN:
        raise FilterError(f"base `{base[:64]}` is not one of {', '.join(BUILTIN)}")
    fields = (set(BUILTIN[base]) | _parse_fields(include, "include")) - _parse_fields(exclude, "exclude")
    return Filter(frozenset(fields), unsafe=unsafe)


def make_filter(include: Iterable[str] = (), exclude: Iterable[str] = (), base: str = "default", unsafe: bool = False) -> str:
    """The filter string ``/filters/create`` would return, computed without a request."""
    return encode(create(";".join(include), ";".join(exclude), base, unsafe))
