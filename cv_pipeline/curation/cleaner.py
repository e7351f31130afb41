"""The report's cleaning rules (DESIGN.md "Cleaning rules"), made explicit and counted.

HTML to text in passes that stay inside C as much as possible: lexbor parses the body (as the
inner HTML of a reused container, see _Workspace), then one of two passes writes the text.
- The runs pass (_runs_text, _join_runs), for bodies without notices, dropped elements or
  comments (almost all): unwrap the inline elements, merge adjacent text nodes and let lexbor's
  own `text(separator=...)` put a separator between runs of text, so block boundaries cost no
  Python at all; only line breaks, list items, <pre> and table cells get marker text nodes.
  Bodies of paragraph-like blocks only (most) are then joined with str methods alone.
- The general pass (_mark, _lay_out) for the rest, and for structures the runs pass hands
  back (nested lists, a block inside a <pre>, ...): one `traverse()` over the elements marks
  notices and unwanted subtrees for removal and inserts tiny marker text nodes ("\\x00" + a
  code letter) at block, list, table and line-break boundaries, `text()` concatenates
  everything in C, and a short Python loop over the markers lays out paragraphs, list items
  and table rows (flat lists skip the loop: see _lay_out).
Both give the same text wherever both apply (tests compare them). NUL can never reach a text
node (the HTML parser drops a raw NUL and turns `&#0;` into U+FFFD, and we strip NUL from the
input first), so input cannot forge a marker. Pathologically deep input goes to a linear-time
fallback instead (see _too_deep). Rule 4 has a C-level fast path too (_FastAscii).

Decisions that the rules leave open, documented here and in the tests:
- `<img>` becomes nothing: its alt text on Stack Exchange is almost always the editor's
  placeholder "enter image description here", which would be noise in a chat dataset.
- Blocks (p, div, blockquote, h1-h6, pre, table, hr, ...) are separated by one blank line;
  blockquotes get no "> " prefix and headings no "#": the rule keeps text, not markup.
- List items are one line each, "- " (ul) or "N. " (ol, honouring `start`); nested lists are
  indented two spaces per level; further lines of an item are indented to its level. An item
  whose first content is a nested list keeps its bullet or number on a line of its own.
- Table rows are one line each, cells joined by " | "; what a cell holds stays on the row's line
  (its paragraphs, line breaks, list items and inner tables' cells become spaces; a <pre> in a
  cell still breaks the row, and rule 1 drops such pairs anyway).
- `<br>` is a line break; two or more in a row make one blank line.
- Whitespace runs collapse to one space, except inside `<pre>` and inside a `$$...$$` display
  math span within one block (kept verbatim: line breaks there are MathJax source). A "$$" in
  `<code>` neither opens nor closes such a span: MathJax does not read code.
- Inline `<code>` keeps its text without backticks.
- ASCII normalisation (the report's rule 4): NFC first; then typographic quotes/dashes/spaces/
  ellipsis (both modes); then a small table (see `_ASCII_TABLE`: ß->ss, æ->ae, ø->o, ×->x,
  ≤-><=, ...); then canonical decomposition with combining marks removed (é->e; q + U+0301 -> q); then
  compatibility decomposition except super/subscripts, fractions and circled/squared forms
  (ﬁ->fi, full-width Ａ->A, but ² stays a symbol because "x2" would change the meaning);
  anything left becomes an HTML entity: the HTML 4 name where there is one (`&sigma;`,
  `&sup2;`), else `&#NNN;`. `<`, `>` and `&` stay as they are: the output is text, not HTML.
- Rule 2 also removes the duplicate notice that Stack Exchange itself edited into the top of
  a question closed as a duplicate, before notices were rendered outside the body: a
  `<blockquote>` whose text starts "Possible Duplicate(s):" or, in its later wording, "This
  question (may) already ha(s|ve) an answer / answers here:" (_DUPLICATE_NOTICE_STARTS). Old
  posts, the highest-voted among them, still carry it in API and dump bodies; it links to
  another question and is not content. A notice removed takes everything it holds with it; a
  quote that opens with the notice quote (a user quoting an old question) loses only that.
- Control characters (other than tab/newline), soft hyphens, zero-width spaces, word joiners
  and BOMs are removed in both modes; lone surrogates are dropped.
"""

from __future__ import annotations

import codecs
import functools
import html as _html
import os
import re
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from selectolax.lexbor import LexborHTMLParser, LexborNode

from cv_pipeline.sources.models import RawQuestion, pick_top_answer

# Bump on any change that alters output text or counts: Dagster then marks cleaned pairs stale.
# 5: a block inside <pre> or <caption> is laid out as the general pass (the definition) does; the runs pass
# had joined it to its neighbours. No text of the benchmark's 80,000 bodies or of the real samples changes.
CLEANER_VERSION = "5"

DropReason = Literal["code_block", "empty", "too_short"]


class CleaningConfig(BaseModel):
    """Options of the cleaning rules; the defaults are the report's."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    normalization: Literal["ascii", "unicode"] = Field(
        "ascii",
        description=(
            "'ascii' (the report's rule): every character becomes ASCII where it has an ASCII form "
            "(é->e, ß->ss, ≤-><=) and an HTML entity otherwise (σ->&sigma;, ²->&sup2;, else &#NNN;). "
            "'unicode' keeps characters. Typographic quotes, dashes, non-breaking spaces and "
            "ellipses become ASCII in both modes."
        ),
    )
    include_title: bool = Field(True, description="Start the question text with the title and a blank line.")
    min_question_chars: int = Field(
        20, ge=0, description="Drop a pair whose cleaned question body (title excluded) has fewer characters."
    )
    min_answer_chars: int = Field(20, ge=0, description="Drop a pair whose cleaned answer has fewer characters.")


@dataclass(frozen=True, slots=True)
class CleanResult:
    """One cleaned pair, or why it was dropped. `changed_by` counts what each rule changed."""

    title: str
    question: str | None
    answer: str | None
    dropped_reason: DropReason | None
    changed_by: dict[str, int] = field(default_factory=dict)

    @property
    def kept(self) -> bool:
        return self.dropped_reason is None


# --------------------------------------------------------------------------------------------
# Character normalisation (rule 4)

_TYPOGRAPHIC: dict[str, str] = {
    **dict.fromkeys("\u2018\u2019\u201a\u201b\u2032\u2035\u02bc\u2039\u203a", "'"),
    **dict.fromkeys("\u201c\u201d\u201e\u201f\u2033\u2036\u00ab\u00bb", '"'),
    **dict.fromkeys("\u2010\u2011\u2012\u2013\ufe63\uff0d", "-"),
    **dict.fromkeys("\u2014\u2015", "--"),
    **dict.fromkeys("\u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                    "\u202f\u205f\u3000\u2028\u2029\u0085", " "),
    **dict.fromkeys("\u00ad\u200b\u2060\ufeff", ""),
    "\u2026": "...",
}

# Characters whose ASCII spelling is conventional but which no Unicode decomposition gives.
_ASCII_TABLE: dict[str, str] = {
    "ß": "ss", "ẞ": "SS", "æ": "ae", "Æ": "AE", "œ": "oe", "Œ": "OE", "ø": "o", "Ø": "O",
    "đ": "d", "Đ": "D", "ł": "l", "Ł": "L", "ı": "i", "ħ": "h", "Ħ": "H", "þ": "th", "Þ": "Th",
    "ð": "d", "Ð": "D", "×": "x", "÷": "/", "−": "-", "±": "+/-", "≤": "<=", "≥": ">=",
    "≠": "!=", "→": "->", "←": "<-", "⇒": "=>", "⇐": "<=", "⇔": "<=>", "↔": "<->",
}

# Compatibility decompositions that would change meaning if flattened to ASCII.
_KEEP_COMPAT = ("<super>", "<sub>", "<fraction>", "<circle>", "<square>")


# Combining diacritical marks (U+0300-036F and its supplements and extensions): accents, removed
# like those canonical decomposition separates (é->e) when no precomposed form absorbs them (q + U+0301).
# Not the combining marks for symbols (U+20D0-20FF: x + U+20D7 is a vector): those stay entities.
_DIACRITIC_RANGES = ((0x300, 0x370), (0x1AB0, 0x1B00), (0x1DC0, 0x1E00), (0xFE20, 0xFE30))


def _ascii_form(ch: str) -> str | None:
    if ch in _ASCII_TABLE:
        return _ASCII_TABLE[ch]
    if any(lo <= ord(ch) < hi for lo, hi in _DIACRITIC_RANGES):
        return ""
    base = "".join(c for c in unicodedata.normalize("NFD", ch) if not unicodedata.combining(c))
    if base and base.isascii():
        return base
    if not unicodedata.decomposition(ch).startswith(_KEEP_COMPAT):
        base = "".join(c for c in unicodedata.normalize("NFKD", ch) if not unicodedata.combining(c))
        if base and base.isascii() and base.isprintable():
            return base
    return None


def _entity(ch: str) -> str:
    name = _html.entities.codepoint2name.get(ord(ch))
    return f"&{name};" if name else f"&#{ord(ch)};"


def _is_removed_control(cp: int) -> bool:
    # C0 (except tab and newline, which whitespace handling deals with) and C1 controls, DEL.
    c0 = cp < 0x20 and cp not in (0x09, 0x0A, 0x0D, 0x0C)
    return c0 or 0x7F <= cp <= 0x9F or 0xD800 <= cp <= 0xDFFF


class _CharMap(dict):
    """Replacement per character, decided once per process and cached."""

    def __init__(self, ascii_mode: bool) -> None:
        super().__init__()
        self.ascii_mode = ascii_mode

    def __missing__(self, ch: str) -> str:
        cp = ord(ch)
        if ch in _TYPOGRAPHIC:
            out = _TYPOGRAPHIC[ch]
        elif _is_removed_control(cp):
            out = ""
        elif cp < 0x80 or not self.ascii_mode:
            out = ch
        else:
            form = _ascii_form(ch)
            out = form if form is not None else _entity(ch)
        self[ch] = out
        return out

    def replace(self, match: re.Match[str]) -> str:
        return self[match.group()]


_CHARMAPS = {"ascii": _CharMap(True), "unicode": _CharMap(False)}
_ASCII_CONTROLS = bytes([*range(1, 9), 0x0B, *range(0x0E, 0x20), 0x7F])
# What may change in "unicode" mode. Replacing only regex matches keeps text on a C fast path
# (str.translate with a mapping would call back into Python for every character).
_UNICODE_CHANGING = re.compile(
    "[\x01-\x08\x0b\x0e-\x1f\x7f-\x9f\ud800-\udfff" + re.escape("".join(_TYPOGRAPHIC)) + "]"
)


def _ascii_replacement(exc: UnicodeError) -> tuple[str, int]:
    # A codec error handler: the encoder scans ASCII runs in C and calls this only for the rest.
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    charmap = _CHARMAPS["ascii"]
    return "".join([charmap[ch] for ch in exc.object[exc.start : exc.end]]), exc.end


codecs.register_error("cv_pipeline.cleaner.ascii", _ascii_replacement)


def normalize_chars(text: str, normalization: Literal["ascii", "unicode"] = "ascii") -> tuple[str, int]:
    """Apply rule 4 to plain text; returns the new text and how many characters changed."""
    if normalization == "unicode":
        if text.isascii():
            raw = text.encode("ascii")
            if len(raw.translate(None, _ASCII_CONTROLS)) == len(raw):
                return text, 0
        return _UNICODE_CHANGING.subn(_CHARMAPS["unicode"].replace, text)
    if text.isascii():
        raw = text.encode("ascii")
        kept = raw.translate(None, _ASCII_CONTROLS)
        if len(kept) == len(raw):
            return text, 0
        return kept.decode("ascii"), len(raw) - len(kept)
    fast = _FAST_ASCII.encode(text)
    return fast if fast is not None else _normalize_ascii_slow(text)


def _normalize_ascii_slow(text: str) -> tuple[str, int]:
    """Rule 4 in "ascii" mode for any text: the definition that _FastAscii reproduces."""
    text = unicodedata.normalize("NFC", text)  # so that "e" + U+0301 is treated like "é"
    changed = len(text) - len(text.encode("ascii", "ignore"))  # every non-ASCII character changes
    raw = text.encode("ascii", "cv_pipeline.cleaner.ascii")
    kept = raw.translate(None, _ASCII_CONTROLS)
    changed += len(raw) - len(kept)
    return kept.decode("ascii"), changed


# Non-ASCII characters _FastAscii may take on: NFC-stable, not combining, and from blocks where no
# character is the second half of a canonical composition, so that text made of ASCII and these
# characters is already NFC (a test checks this over all of them).
_FAST_RANGES = ((0xA0, 0x300), (0x370, 0x530), (0x1E00, 0x2C00), (0xFB00, 0xFB07), (0xFF00, 0xFFF0))
# Taken on at start: typographic punctuation and the letters and symbols common in statistics posts.
_FAST_SEED = "".join(_TYPOGRAPHIC) + "αβγδεθλμνπρσστφχψωΣΔ²±×≤≥≠≈∞√→éèáóöüíç"
_ASCII_BYTES = bytes(range(128))


def _fast_eligible(ch: str) -> bool:
    cp = ord(ch)
    return (
        any(lo <= cp < hi for lo, hi in _FAST_RANGES)
        and unicodedata.combining(ch) == 0
        and unicodedata.normalize("NFC", ch) == ch
    )


class _FastAscii:
    """Rule 4 in "ascii" mode in a few C-level passes, for text whose non-ASCII characters are known.

    A charmap codec (`codecs.charmap_build`) gives each of up to 128 known non-ASCII characters
    its own byte 0x80-0xFF, so one encode turns the text into one byte per character (an unknown
    character fails the encode and the text takes `_normalize_ascii_slow`, which also teaches the
    characters here). Deleting the ASCII bytes counts the changed characters; one
    `bytes.translate` turns the bytes of one-character replacements into them and deletes
    controls; the few longer replacements ("--", "...", "&sigma;") are one `bytes.replace` each.
    """

    def __init__(self, seed: str) -> None:
        self.known: list[str] = []
        self._take_on([])
        self.learn(seed)

    def learn(self, text: str) -> None:
        """Take on the eligible non-ASCII characters of `text` while there is room."""
        new = sorted({ch for ch in _NON_ASCII.findall(text) if _fast_eligible(ch)} - set(self.known))
        room = 128 - len(self.known)
        if new and room > 0:
            self._take_on(new[:room])

    def _take_on(self, new: list[str]) -> None:
        known = self.known + new
        table = bytearray(range(256))
        longer: dict[int, bytes] = {}
        for byte, ch in enumerate(known, 128):
            out = _CHARMAPS["ascii"][ch]
            if len(out) == 1:
                table[byte] = ord(out)
            else:
                longer[byte] = out.encode("ascii")
        decoding = "".join(map(chr, range(128))) + "".join(known) + "\ufffe" * (256 - 128 - len(known))
        # One tuple, swapped in whole, so a concurrent encode sees either the old or the new state.
        self.state = (codecs.charmap_build(decoding), bytes(table), longer)
        self.known = known

    def encode(self, text: str) -> tuple[str, int] | None:
        encoding_map, table, longer = self.state
        try:
            raw = codecs.charmap_encode(text, "strict", encoding_map)[0]
        except UnicodeEncodeError:
            self.learn(text)
            return None
        high = raw.translate(None, _ASCII_BYTES)  # one byte per non-ASCII character
        out = raw.translate(table, _ASCII_CONTROLS)
        changed = len(high) + len(raw) - len(out)
        if longer:
            for byte in set(high):
                expansion = longer.get(byte)
                if expansion is not None:
                    out = out.replace(_BYTES[byte], expansion)
        return out.decode("ascii"), changed


_NON_ASCII = re.compile("[^\x00-\x7f]")
_BYTES = [bytes([i]) for i in range(256)]
_FAST_ASCII = _FastAscii(_FAST_SEED)


# --------------------------------------------------------------------------------------------
# HTML to text (rules 2 and 3)

# Markers: "\x00" + one code letter (ordered lists add their start number and ";").
_M = "\x00"
_BLOCK_TAGS = frozenset(
    "p div blockquote h1 h2 h3 h4 h5 h6 hr address article aside section header footer nav main "
    "figure figcaption details summary center fieldset form dl dt dd legend".split()
)
_DROP_TAGS = frozenset(
    "script style template noscript iframe noembed noframes object embed svg title textarea select "
    "button xmp plaintext".split()
)
# The markers each element gets before and after it (see _layout for what they mean).
_AROUND: dict[str, tuple[str, str]] = {
    **dict.fromkeys(_BLOCK_TAGS, ("\x00P", "\x00P")),
    "li": ("\x00I", "\x00i"),
    "br": ("", "\x00B"),
    **dict.fromkeys(("ul", "menu", "dir"), ("\x00U", "\x00E")),
    "ol": ("", "\x00E"),  # its opening marker carries the start number
    **dict.fromkeys(("td", "th"), ("\x00C", "")),
    **dict.fromkeys(("tr", "caption"), ("\x00R", "")),
    "table": ("\x00T", "\x00t"),
    **dict.fromkeys(("pre", "listing"), ("\x00X", "\x00x")),
}
_WS = re.compile(r"[ \t\n\r\f]+")
_PRE_TAG = re.compile(r"<(?:pre|listing)[\s/>]", re.I)  # <listing> is an obsolete <pre>


@dataclass(slots=True)
class _Converted:
    text: str
    has_pre: bool = False
    notices_removed: int = 0
    elements_dropped: int = 0
    images_dropped: int = 0
    chars_normalized: int = 0


class _Workspace(threading.local):
    """One lexbor document per thread, reused for many bodies.

    Creating a document costs more than parsing a typical body, so each body is parsed as the
    inner HTML of one container <div> (an HTML fragment parse, as the site renders a body inside
    its post <div>; unclosed tags cannot leak from one body into the next). Every parse leaves a
    few KB in the document's memory arena, so a fresh document replaces it every _REUSE bodies.
    """

    parser: LexborHTMLParser | None = None
    container: LexborNode | None = None
    uses: int = 0


_LOCAL = _Workspace()
_REUSE = 256


def _parse_into_container(html: str) -> LexborNode:
    ws = _LOCAL
    if ws.container is None or ws.uses >= _REUSE:
        ws.parser = LexborHTMLParser("<div></div>")
        ws.container = ws.parser.body.child
        ws.uses = 0
    ws.uses += 1
    root = ws.container
    try:
        root.inner_html = html
    except (UnicodeError, ValueError):
        # Lone surrogates (e.g. bytes decoded with errors="surrogateescape") cannot be UTF-8.
        root.inner_html = html.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return root


def _mark(root: LexborNode, conv: _Converted, find_notices: bool, dollars: bool = False) -> str:
    """Remove notices and dropped subtrees, insert markers; return the marked text.

    The general pass: it walks the parsed tree, decomposes what is dropped, inserts the marker
    text nodes and concatenates the text in C. With `dollars` (the body has "$$"), a <code>
    holding "$" gets "\\x00c" markers around it, so that no $$...$$ span (see _PROTECTED) starts
    or ends inside code: MathJax does not read code.
    """
    nodes = root.traverse()
    next(nodes)  # the container itself
    drop = []
    skip_to = None  # inside a dropped subtree: the id of the first node after it (what it holds goes uncounted)
    for node in nodes:
        if skip_to is not None:
            if node.mem_id != skip_to:
                continue
            skip_to = None
        tag = node.tag
        if find_notices and _is_notice(node, tag) or tag == "blockquote" and _is_duplicate_notice_quote(node):
            drop.append(node)
            conv.notices_removed += 1
            skip_to = _id_after(node)
            continue
        around = _AROUND.get(tag)
        if around is not None:
            _insert_markers(node, tag, around)
        elif tag in _DROP_TAGS:
            drop.append(node)
            conv.elements_dropped += 1
            skip_to = _id_after(node)
        elif tag == "img":
            conv.images_dropped += 1
        elif dollars and tag == "code" and "$" in node.text():
            node.insert_before("\x00c")
            node.insert_after("\x00c")
    for node in drop:  # none is inside another
        node.decompose()
    return root.text()


def _id_after(node: LexborNode) -> int:
    """The mem_id of the first node after `node`'s subtree that traverse() yields (not a text node); 0 if none.

    Linear over a whole pass: the climb from a dropped node passes only ancestors whose subtree it ends.
    """
    while node is not None:
        sibling = node.next
        while sibling is not None and sibling.tag == "-text":
            sibling = sibling.next
        if sibling is not None:
            return sibling.mem_id
        node = node.parent
    return 0


# The runs pass (see _runs_text) takes blocks, lists, <pre>, tables and line breaks; the markers
# it inserts around these elements (items, <pre> and <br> are handled on their own). Dropped
# elements, comments, processing instructions and a duplicate-notice blockquote send a body to
# the general pass.
_RUN_MARKERS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("ul", "menu", "dir"), ("\x00U", "\x00E")),
    "ol": ("", "\x00E"),  # its opening marker carries the start number
    "table": ("\x00T", "\x00t"),
    **dict.fromkeys(("tr", "caption"), ("\x00R", "")),
    **dict.fromkeys(("td", "th"), ("\x00C", "")),
}
_NOT_IN_RUNS = frozenset(_AROUND).difference(_BLOCK_TAGS, _RUN_MARKERS, ("br", "li", "pre", "listing")) | _DROP_TAGS


@functools.cache
def _tag_id(tag: str) -> int:
    """Lexbor's id for a standard tag name (a constant of its tag table), read off a parse."""
    for context in ("{}", "<table>{}</table>", "<table><tr>{}</tr></table>"):  # cells only exist in rows
        for node in LexborHTMLParser(context.format(f"<{tag}></{tag}>")).root.traverse():
            if node.tag == tag:
                return node.tag_id
    raise AssertionError(f"no <{tag}> in any parse")


_BLOCK_IDS = frozenset(map(_tag_id, _BLOCK_TAGS))
_RUN_MARKER_IDS = frozenset(map(_tag_id, _RUN_MARKERS))
_NOT_IN_RUNS_IDS = frozenset(map(_tag_id, _NOT_IN_RUNS))
_IMG_ID = _tag_id("img")
_BR_ID = _tag_id("br")
_LI_ID = _tag_id("li")
_PRE_IDS = frozenset(map(_tag_id, ("pre", "listing")))
_CODE_ID = _tag_id("code")
_BLOCKQUOTE_ID = _tag_id("blockquote")
_BLOCK_IDS_BUT_QUOTE = _BLOCK_IDS - {_BLOCKQUOTE_ID}
_NOT_IN_RUNS_OR_QUOTE = _NOT_IN_RUNS_IDS | {_BLOCKQUOTE_ID}
# Lexbor numbers its node kinds (text, comment, doctype, ...) below its first tag, "a"; a
# processing instruction has id 0.
_FIRST_ELEMENT_ID = _tag_id("a")


def _runs_text(root: LexborNode, html: str = "") -> tuple[str, int, bool, bool] | None:
    """The runs pass, for bodies without notices, dropped elements or comments (most of them).

    Returns the text with a block separator between runs of text, the images removed, whether
    there is a <pre> and whether there are markers (_join_runs lays those out, _join_blocks
    the rest); or None, tree untouched, when the body has anything else (a blockquote that is
    rule 2's duplicate notice; or, when `html` has "$$", a <code> holding "$": see _mark).

    Unwrapping the inline elements (deleting the empty ones, such as <img>) and merging
    adjacent text nodes leaves one text node per run of text between two element boundaries,
    so lexbor's own `text(separator=...)` marks every block boundary in C. A <br> becomes a
    marker inside its run (it is replaced before the merge), and so does the start of a list
    item or <pre> (its marker joins its first run); their ends, lists and tables get marker
    text nodes inserted after the merge, each a run of its own. That is one or two C calls per
    inline element, line break, list item or cell instead of two marker insertions per block.
    Tests compare the result with the general pass.
    """
    nodes = root.traverse()
    next(nodes)  # the container itself
    inline = []
    codes = []
    marked = []
    breaks = []
    items = []
    pres = []
    images = 0
    # Locals: this loop runs for every element of nearly every body, and a global lookup costs more.
    block_ids, run_marker_ids, pre_ids, not_in_runs = _BLOCK_IDS_BUT_QUOTE, _RUN_MARKER_IDS, _PRE_IDS, _NOT_IN_RUNS_OR_QUOTE
    br_id, li_id, img_id, code_id, first_element = _BR_ID, _LI_ID, _IMG_ID, _CODE_ID, _FIRST_ELEMENT_ID
    quote_id = _BLOCKQUOTE_ID
    for node in nodes:
        tag = node.tag_id  # an int: cheaper than the name, which is a new str on every call
        if tag in block_ids:
            continue
        if tag in run_marker_ids:
            marked.append(node)
        elif tag == br_id:
            breaks.append(node)
        elif tag == li_id:
            items.append(node)
        elif tag in pre_ids:
            pres.append(node)
        elif tag in not_in_runs or tag < first_element:  # below: comments, instructions
            # A blockquote is a block, kept out of block_ids so that only blockquotes pay for this test;
            # the general pass removes one that is rule 2's duplicate notice.
            if tag != quote_id or _is_duplicate_notice_quote(node):
                return None
        else:
            images += tag == img_id
            inline.append(node)
            if tag == code_id:
                codes.append(node)
    # Looked for only in bodies with <code> (a scan of the HTML costs about what the int compares above do).
    if codes and "$$" in html and any("$" in code.text() for code in codes):
        return None
    # A block, item or line break inside a <pre> or <caption>: its runs cannot show where it starts and ends
    # (an empty or blank block gives no run at all), which _layout's text depends on.
    if any(map(_holds_breaks, pres)) or any(_holds_breaks(n) for n in marked if n.tag_id == _CAPTION_ID):
        return None
    # Document order: an element is unwrapped before its descendants, and only empty elements
    # (which have none) are deleted, so every node here is still alive when reached.
    for node in inline:
        node.unwrap(delete_empty=True)
    for node in breaks:
        node.replace_with("\x00B")
    # An item's or a <pre>'s start marker joins its first run of text (so a run after an empty
    # item, or whitespace before a block in a <pre>, cannot pass for its content); its end
    # marker, inserted after the merge, is a run of its own.
    starts = [*((n, "\x00I") for n in items), *((n, "\x00X") for n in pres)] if items or pres else ()
    for node, start in starts:
        first = node.first_child
        if first is None:
            node.insert_child(start)
        else:
            first.insert_before(start)
    if inline or breaks or starts:
        root.merge_text_nodes()
    for node, start in starts:
        node.insert_after("\x00i" if start == "\x00I" else "\x00x")
    for node in marked:
        tag = node.tag
        _insert_markers(node, tag, _RUN_MARKERS[tag])
    markers = bool(marked or breaks or starts)
    return root.text(separator="\x00P", skip_empty=True), images, bool(pres), markers


_CAPTION_ID = _tag_id("caption")
_BREAK_IDS = _BLOCK_IDS | {_LI_ID, _BR_ID}


def _holds_breaks(node: LexborNode) -> bool:
    """Does the element hold a block, list item or line break (anywhere below it)?"""
    below = node.traverse()
    next(below)  # the element itself
    return any(n.tag_id in _BREAK_IDS for n in below)


_KEPT_SPACE = re.compile("[\t\n\r\f]")  # after collapsing, only inside $$...$$ and <pre>


def _join_runs(text: str) -> str | None:
    """Lay out _runs_text's runs (normalised): what _layout makes of the same body, or None.

    Blocks are joined by blank lines; within a block, line breaks ("\\x00B") start a new line,
    two or more a blank line. A list is one block of its non-empty items, one per line, "- "
    or "N. " and the item's text (an empty item still takes its number). A <pre> keeps its text
    verbatim (trailing whitespace aside, as _layout does). A table is one block of its rows,
    one per line, cells joined by " | " (blocks and line breaks in a cell become spaces).
    None, for the general pass to decide, when the runs are not that simple: nesting (a list,
    table or <pre> in another, a list item or caption of more than one run, a line break in an
    item), text in a list outside its items, an item or row outside its list or table, a <pre>
    not holding exactly one run of plain text, a tab or line break kept in a table cell (inside
    $$...$$, which _layout keeps).
    """
    runs = _squash_unprotected(text).split("\x00P")
    out: list[str] = []
    lines: list[str] | None = None  # the open list's or table's lines
    cells: list[list[str]] | None = None  # the open table row's cells, each a list of runs
    caption: list[str] = []  # runs of the open table row before its first cell (a <caption>)
    ordered = in_pre = in_table = False
    number = 0  # the open list's last item number
    item: list[str] | None = None  # the open item's runs of text
    pre = ""
    for run in runs:
        code = run[1:2] if run[:1] == "\x00" else ""
        if code == "I":  # an item: its marker, then its first run of text
            if lines is None or in_table or item is not None:
                return None
            number += 1
            item = []
            run = run[2:]
        elif code == "i":
            if item is None:
                return None
            if item:  # the first line takes the bullet or number, further ones are indented
                lines.append((f"{number}. " if ordered else "- ") + "\n  ".join(item))  # type: ignore[union-attr]
            item = None
            continue
        if code and code != "B" and code != "I":  # a structure marker: always a run of its own
            if code == "C":
                if cells is None or caption:
                    return None
                cells.append([])
            elif code == "R" or code == "t":
                if not in_table:
                    return None
                if cells is not None:
                    row = " ".join(caption) if caption else " | ".join([" ".join(cell) for cell in cells])
                    lines.append(_squash(row.replace("\x00B", " ")).strip())  # type: ignore[union-attr]
                cells, caption = ([], []) if code == "R" else (None, [])
                if code == "t":
                    out.append("\n".join(filter(None, lines)))  # type: ignore[arg-type]
                    lines, in_table = None, False
            elif in_table:
                return None
            elif code == "U" or code == "O" or code == "T":
                if lines is not None or in_pre:
                    return None
                lines = []
                in_table = code == "T"
                ordered = code == "O"
                number = int(run[2:-1]) - 1 if ordered else 0
            elif code == "E":
                if lines is None or in_pre or item is not None:
                    return None
                out.append("\n".join(lines))
                lines = None
            elif code == "X":  # a <pre>: its marker and all of its text, verbatim
                if lines is not None or in_pre or "\x00" in run[2:]:
                    return None
                in_pre, pre = True, run[2:].rstrip(" \t\n")
            else:  # "x"
                if not in_pre or not pre:
                    return None
                out.append(pre)
                in_pre = False
        elif in_pre:  # a second run in a <pre>: a block inside it
            return None
        elif in_table:
            if cells is None or _KEPT_SPACE.search(run) is not None:  # _layout keeps $$...$$ verbatim
                return None
            if cells:
                cells[-1].append(run)
            elif caption or "\x00" in run:
                return None
            else:
                caption.append(run)
        elif lines is not None:  # text in a list: only inside an item, and without line breaks
            if item is None or "\x00" in run:
                return None
            run = run.strip()
            if run:
                item.append(run)
        elif "\x00" in run:
            out.append(_break_lines(run))
        else:
            out.append(run.strip())
    if lines is not None or in_pre:
        return None
    return "\n\n".join(filter(None, out)).strip()


def _break_lines(run: str) -> str:
    # A block's run with line breaks: one break starts a new line, two or more a blank line.
    out: list[str] = []
    gap = 0
    for piece in run.split("\x00B"):
        piece = piece.strip()
        if piece:
            if out:
                out.append("\n" if gap == 1 else "\n\n")
            out.append(piece)
            gap = 0
        gap += 1
    return "".join(out)


def _insert_markers(node: LexborNode, tag: str, around: tuple[str, str]) -> None:
    """Insert the marker text nodes that go before and after `node` (an <ol>'s carries its start)."""
    before, after = around
    if tag == "ol":
        before = f"\x00O{_ol_start(node)};"
    if before:
        node.insert_before(before)
    if after:
        node.insert_after(after)


def _ol_start(node: LexborNode) -> int:
    value = node.attributes.get("start")
    try:
        return max(-(10**9), min(10**9, int(value.strip()))) if value else 1
    except ValueError:
        return 1


def _is_notice(node: LexborNode, tag: str) -> bool:
    classes = node.attributes.get("class")
    return bool(classes) and _names_a_notice(tag, classes)


def _names_a_notice(tag: str, classes: str) -> bool:
    """Rule 2's selectors `aside.s-notice, .js-post-notice, .post-notice`, matched on class tokens."""
    tokens = classes.split()
    return "js-post-notice" in tokens or "post-notice" in tokens or (tag == "aside" and "s-notice" in tokens)


# Rule 2's notice of an old duplicate closure, edited into the body by Stack Exchange (see the
# module docstring). The passes test the text of each <blockquote> they meet (8% of bodies have
# one); a scan of every body's HTML for these words would cost more.
_DUPLICATE_NOTICE_STARTS = (
    "Possible Duplicate:", "Possible Duplicates:",
    "This question already has an answer here:", "This question already has answers here:",
    "This question may already have an answer here:", "This question may already have answers here:",
)


def _is_duplicate_notice(blockquote_text: str) -> bool:
    return blockquote_text.lstrip().startswith(_DUPLICATE_NOTICE_STARTS)


def _is_duplicate_notice_quote(blockquote: LexborNode) -> bool:
    """A blockquote that is the notice: its text starts with the notice's words, and not because it opens with
    another quote (a user quoting an old question, notice and all: only the inner quote is the notice)."""
    if not _is_duplicate_notice(blockquote.text()):
        return False
    first = next((child for child in blockquote.iter() if child.tag[0] != "-"), None)  # not a comment
    return first is None or first.tag != "blockquote"


_PROTECTED = re.compile(r"(\x00X.*?\x00x|\$\$[^$\x00]+\$\$)", re.S)
# The same without <pre> spans, for text that has none: a literal prefix the regex engine scans for fast.
_DISPLAY_MATH = re.compile(r"(\$\$[^$\x00]+\$\$)")


def _squash(s: str) -> str:
    # Plain str.replace is C-speed, several times faster than a regex substitution here; each
    # pass halves every run of spaces, so it stays O(n log n) even on hostile input.
    # (Other Unicode spaces and controls were already turned into " " or "" by normalize_chars.)
    if "\n" in s:
        s = s.replace("\n", " ")
    if "\t" in s or "\r" in s or "\f" in s:
        s = s.replace("\t", " ").replace("\r", " ").replace("\f", " ")
    while "  " in s:
        s = s.replace("  ", " ")
    return s


_SAME_AS_ONE = (("\x00P \x00P", "\x00P"), ("\x00P\x00P", "\x00P"), ("\x00i \x00I", "\x00I"), ("\x00i\x00I", "\x00I"))


def _squash_outside_pre(marked: str) -> str:
    # _collapse's whitespace step for text without "$$": what splitting on _PROTECTED does, with
    # str.find (each <pre> span runs from its start marker to the next end marker, as the
    # non-greedy regex does) instead of a regex that tries a match at every position.
    out = []
    pos = 0
    while (start := marked.find("\x00X", pos)) >= 0 and (end := marked.find("\x00x", start + 2)) >= 0:
        out += (_squash(marked[pos:start]), marked[start : end + 2])
        pos = end + 2
    out.append(_squash(marked[pos:]))
    return "".join(out)


def _squash_unprotected(marked: str) -> str:
    """Whitespace runs become one space outside <pre> spans and $$...$$ spans (_PROTECTED)."""
    if "\x00X" not in marked:
        return _squash_outside_math(marked)
    if "$$" not in marked:
        return _squash_outside_pre(marked)
    parts = _PROTECTED.split(marked)
    return "".join([p if i % 2 else _squash(p) for i, p in enumerate(parts)])


def _collapse(marked: str) -> str:
    """Whitespace runs become one space, except inside <pre> and $$...$$ spans."""
    return _merge_boundaries(_squash_unprotected(marked))


def _merge_boundaries(squashed: str) -> str:
    # Fewer pieces for the layout loop: back-to-back block ends and starts mean the same as one.
    for pair, one in _SAME_AS_ONE:
        if pair in squashed:
            squashed = squashed.replace(pair, one)
    return squashed


# Deeper lists keep this indentation: output stays linear in the input even for hostile nesting.
_MAX_INDENT = 8


def _layout(marked: str) -> str:
    """Lay out the collapsed, marked text: paragraphs, list items, table rows."""
    out: list[str] = []
    pending = 0  # newlines owed before the next text (0, 1 or 2)
    prefix: str | None = None  # a list-item marker owed before the next text
    prefix_depth = 0  # how many lists were open when that item started
    lists: list[list] = []  # [ordered, next number] per open list
    pre = table = cells = 0  # open <pre>s, open tables, cells seen in the current row
    nested = 0  # lists and tables open inside the current table cell
    last_space = False

    def emit(t: str, raw: bool) -> None:
        nonlocal pending, prefix, last_space
        owed = pending or prefix is not None or not out
        if not raw and (owed or last_space):
            t = t.lstrip(" ")
        if not t:
            return
        if owed:
            if pending and out:
                out[-1] = out[-1].rstrip(" \t\n")
                out.append("\n" * pending)
            if prefix is not None:
                out.append(prefix)
            elif lists and out:
                out.append("  " * min(len(lists), _MAX_INDENT))  # a further line of a list item
            pending = 0
            prefix = None
        out.append(t)
        last_space = t[-1] == " "

    pieces = marked.split(_M)
    if pieces[0]:
        emit(pieces[0], False)
    for piece in pieces[1:]:
        code = piece[:1]
        t = piece[1:]
        soft = table and cells  # inside a table cell, breaks become spaces
        if soft and (code in _OPENS_IN_CELL or nested and code in _CLOSES_IN_CELL):
            # A list or table inside a cell stays on the row's line: its items and cells become spaces.
            if code == "O":
                t = t.partition(";")[2]
            if code == "U" or code == "O" or code == "T":
                nested += 1
            elif code == "E" or code == "t":
                nested -= 1
            emit(" ", False)
        elif code == "P":
            if soft:
                emit(" ", False)
            else:
                pending = max(pending, 1 if lists else 2)
        elif code == "I":
            if prefix is not None and 0 < prefix_depth < len(lists):
                # The enclosing item holds nothing but this nested list so far: its bullet or number on a
                # line of its own, so that this item stays under it (a stray <li> outside lists has none).
                if out:
                    out[-1] = out[-1].rstrip(" \t\n")
                    out.append("\n" * max(pending, 1))
                out.append(prefix.rstrip(" "))
                pending, prefix, last_space = 0, None, False
            prefix_depth = len(lists)
            if lists:
                ordered, n = lists[-1]
                lists[-1][1] = n + 1
            else:  # a stray <li> outside any list
                ordered, n = False, 1
            pending = max(pending, 1)
            prefix = "  " * min(max(len(lists), 1) - 1, _MAX_INDENT) + (f"{n}. " if ordered else "- ")
        elif code == "i":
            pending = max(pending, 1)
            prefix = None
        elif code == "U" or code == "O":
            if code == "O":
                num, _, t = t.partition(";")
                lists.append([True, int(num)])
            else:
                lists.append([False, 1])
            pending = max(pending, 2 if len(lists) == 1 else 1)
        elif code == "E":
            if lists:
                lists.pop()
            pending = max(pending, 1 if lists else 2)
        elif code == "B":
            if soft:
                emit(" ", False)
            else:
                pending = min(pending + 1, 2)
        elif code == "C":
            cells += 1
            if cells > 1:
                owed = pending or prefix is not None or not out
                emit("| " if owed or last_space else " | ", True)
        elif code == "R":
            pending = max(pending, 1)
            cells = 0
        elif code == "T" or code == "t":
            if code == "T":
                table += 1
            else:
                table = max(table - 1, 0)
            cells = 0
            pending = max(pending, 1 if lists else 2)
        elif code == "X" or code == "x":
            pre = pre + 1 if code == "X" else max(pre - 1, 0)
            pending = max(pending, 1 if lists else 2)
        if t:
            emit(t, pre > 0)
    return "".join(out).strip()


_OPENS_IN_CELL = frozenset("UOTIi")
_CLOSES_IN_CELL = frozenset("EtRC")


def _lay_out(marked: str) -> str:
    """_layout(_collapse(marked)), with a shortcut for bodies made of paragraph-like blocks only.

    Most bodies have no lists, tables, line breaks or <pre>: their only markers are block
    boundaries. Then the layout is just "each block's text with whitespace runs collapsed
    (outside $$...$$) and stripped, empty blocks skipped, the rest joined by blank lines", which
    C-level str methods do without the per-piece Python loop of _layout. (A block's text can end
    in whitespace only through a collapsed run, i.e. one space: a $$...$$ span ends in "$$".)
    Bodies whose only other markers are flat lists (the next most common kind) take a similar
    shortcut, _lay_out_lists; the rest (tables, <br>, <pre>, nested lists) use the general loop.
    """
    if _NON_BLOCK_MARKER.search(marked) is None:
        return _join_blocks(marked)
    if _NON_LIST_MARKER.search(marked) is not None:  # tables, <br>, <pre>: no shortcut
        return _layout(_collapse(marked))
    squashed = _squash_outside_math(marked)  # no <pre> here, so this is _collapse's whitespace step
    if _FLAT_LISTS.fullmatch(squashed) is None:
        return _layout(_merge_boundaries(squashed))
    return _lay_out_lists(squashed)


_NON_BLOCK_MARKER = re.compile("\x00[^P]")
_NON_LIST_MARKER = re.compile("\x00[^PUOIiE]")


def _join_blocks(marked: str) -> str:
    # Blocks only: each block's text, whitespace collapsed (outside $$...$$) and stripped, empty
    # ones skipped, the rest joined by blank lines. After collapsing, only spaces (or a $$ span's
    # own "$$") can start or end a block, so str.strip is strip(" ").
    return "\n\n".join(filter(None, map(str.strip, _squash_outside_math(marked).split("\x00P"))))
# Blocks and flat lists after whitespace collapsing: no nested or stray lists, nothing but
# whitespace (one space at most, once collapsed) between a list's items, no markers inside an item.
# Possessive quantifiers keep the match linear; a failed match means "use the general _layout".
_FLAT_LISTS = re.compile(
    "(?:[^\x00]++|\x00P|\x00(?:U|O-?[0-9]+;) ?(?:\x00I[^\x00]*+\x00i ?)*+\x00E)*+"
)


def _squash_outside_math(marked: str) -> str:
    # _collapse's whitespace step for text without <pre>, where _PROTECTED splits like _DISPLAY_MATH.
    if "$$" in marked:
        parts = _DISPLAY_MATH.split(marked)
        return "".join([p if i % 2 else _squash(p) for i, p in enumerate(parts)])
    return _squash(marked)


def _lay_out_lists(squashed: str) -> str:
    """_layout for collapsed text that _FLAT_LISTS matches: blocks and flat lists only.

    Such a body lays out as its top-level blocks joined by blank lines, where a list is one block
    of its non-empty items, one per line: "- " or "N. " and the item's text, stripped (an empty
    item still takes its number).
    """
    segments = squashed.split("\x00E")  # each but the last: blocks, then one list
    blocks: list[str] = []
    for seg in segments[:-1]:
        start = seg.find("\x00U")
        if start >= 0:
            texts = [item.partition("\x00i")[0].strip(" ") for item in seg[start + 2 :].split("\x00I")[1:]]
            lines = ["- " + text for text in texts if text]
        else:
            start = seg.find("\x00O")
            num, _, body = seg[start + 2 :].partition(";")
            texts = [item.partition("\x00i")[0].strip(" ") for item in body.split("\x00I")[1:]]
            lines = [f"{n}. {text}" for n, text in enumerate(texts, int(num)) if text]
        blocks.extend([p.strip(" ") for p in seg[:start].split("\x00P")])
        blocks.append("\n".join(lines))
    blocks.extend([p.strip(" ") for p in segments[-1].split("\x00P")])
    return "\n\n".join([block for block in blocks if block])


# The HTML tree-construction algorithm is quadratic in nesting depth (every start tag checks the
# stack of open elements), so absurdly deep input (thousands of unclosed <li> or <div>) would
# take seconds. Real post bodies nest a few dozen levels at most; beyond _MAX_DEPTH (estimated
# by a linear scan, only for bodies with many tags) a linear regex fallback cleans instead.
_MANY_TAGS = 2_000
_MAX_DEPTH = 1_000
_TAG_SCAN = re.compile(r"<(/?)([a-zA-Z][^\s/>]*)")
# Void elements never nest; these close an open sibling of their own kind, so they do not deepen.
_FLAT = frozenset(
    "area base br col embed hr img input link meta source track wbr p li dt dd tr td th option".split()
)


def _too_deep(html: str) -> bool:
    if len(html) < _MANY_TAGS or html.count("<") < _MANY_TAGS:
        return False
    depth = 0
    for m in _TAG_SCAN.finditer(html):
        if m.group(1):
            depth = depth - 1 if depth else 0
        elif m.group(2).lower() not in _FLAT:
            depth += 1
            if depth > _MAX_DEPTH:
                return True
    return False


_FB_DROP = re.compile(
    r"<(script|style|template|textarea|title|iframe|noscript|xmp|plaintext|noembed|noframes|svg|object|select|button)"
    r"\b.*?(?:</\1\s*>|$)",
    re.S | re.I,
)
_FB_COMMENT = re.compile(r"<!--.*?(?:-->|$)", re.S)
_FB_BREAK = re.compile(
    r"<(?:/?(?:p|div|li|ul|ol|tr|table|blockquote|h[1-6]|pre|dl|dd|dt)|br|hr)\b[^>]*(?:>|$)", re.I
)
_FB_TAG = re.compile(r"<[a-zA-Z/!?][^>]*(?:>|$)")
# Start tags, and the class attribute in one's attribute text: possessive quantifiers and a separate search keep
# the fallback linear on hostile input (a lazy scan for " class=" inside one regex was quadratic).
_FB_START_TAG = re.compile(r"<([a-zA-Z][^\s/<>]*+)([^<>]*+)")
_FB_CLASS = re.compile(r"""\sclass\s*+=\s*+(?:"([^"]*+)"|'([^']*+)'|([^\s"']*+))""", re.I)


def _fb_drop_notices(html: str) -> tuple[str, int]:
    """Cut each notice element, from its start tag to the end tag that closes it (or the end); and how many.

    One forward scan per notice from where the last one ended, counting start and end tags of
    the notice's own name, so the whole pass stays linear in the input.
    """
    out: list[str] = []
    pos = 0
    for m in _FB_START_TAG.finditer(html):
        if m.start() < pos:
            continue
        tag = m.group(1).lower()
        if tag == "blockquote":
            # The text right after the start tag up to the quote's first end tag, its tags removed: a bounded
            # look, so still linear.
            head = html[m.end() + 1 : m.end() + 400]
            lower = head.lower()
            close = lower.find("</blockquote")
            if not _is_duplicate_notice(_html.unescape(_FB_TAG.sub("", head if close < 0 else head[:close]))):
                continue
            if _html.unescape(_FB_COMMENT.sub("", lower)).lstrip().startswith("<blockquote"):
                continue  # a quote that opens with the notice quote: only the inner one goes
        elif "notice" not in m.group(2):
            continue
        else:
            c = _FB_CLASS.search(m.group(2))
            if c is None or not _names_a_notice(tag, c.group(1) or c.group(2) or c.group(3) or ""):
                continue
        out.append(html[pos : m.start()])
        depth, end = 1, len(html)
        for t in re.compile(rf"<(/?){re.escape(tag)}[\s/>]", re.I).finditer(html, m.end()):
            depth += -1 if t.group(1) else 1
            if depth == 0:
                end = html.find(">", t.end() - 1) + 1 or len(html)
                break
        pos = end
    if not out:
        return html, 0
    out.append(html[pos:])
    return "".join(out), len(out) - 1


def _fallback(html: str, conv: _Converted, config: CleaningConfig) -> None:
    """Linear-time cleaning for pathologically nested input only: the same rules, less layout.

    Notices, dropped elements and comments go; every block boundary, item or line break starts a
    paragraph; whitespace collapses outside $$...$$ as in the tree passes.
    """
    html = html.replace("\x00", "")  # so that no input can forge a paragraph marker
    if "notice" in html or "<blockquote" in html.lower():
        html, conv.notices_removed = _fb_drop_notices(html)
    text, conv.elements_dropped = _FB_DROP.subn("", html)
    text = _FB_COMMENT.sub("", text)
    conv.has_pre = _PRE_TAG.search(text) is not None  # as the tree passes see it: not in what was removed
    text = _FB_TAG.sub("", _FB_BREAK.sub("\x00P", text))
    text = _html.unescape(text)  # "&#0;" becomes U+FFFD, never NUL
    text, conv.chars_normalized = normalize_chars(text, config.normalization)
    conv.text = _join_blocks(text)


def _tree_pass(html: str, runs_pass: bool = True) -> tuple[str, LexborNode, bool, tuple[str, int, bool, bool] | None]:
    """Parse a body (NUL removed) and try the runs pass: the HTML parsed, its tree, whether to look for
    notices, and _runs_text's result (None: the tree is untouched, for the general pass)."""
    if "\x00" in html:
        html = html.replace("\x00", "")
    root = _parse_into_container(html)
    find_notices = "notice" in html  # cheap pre-check: reading attributes of every node is not
    return html, root, find_notices, _runs_text(root, html) if runs_pass and not find_notices else None



# --------------------------------------------------------------------------------------------
# The C accelerator (_fastclean.c): the same definition (_mark, normalize_chars, _layout(_collapse(...)))
# in one C call per body, on selectolax's own Lexbor; it hands back (None) every body it is not sure of.


def _char_rule(ascii_mode: int, cp: int) -> tuple[str, int, int]:
    """Rule 4 for one non-ASCII character, for _fastclean's cache: its replacement, whether it counts as
    changed, and whether it may be replaced on its own (in "ascii" mode only characters that cannot
    take part in NFC composition: _fast_eligible)."""
    ch = chr(cp)
    if ascii_mode:
        return _CHARMAPS["ascii"][ch], 1, int(_fast_eligible(ch))
    changes = _UNICODE_CHANGING.match(ch) is not None
    return (_CHARMAPS["unicode"][ch] if changes else ch), int(changes), 1


def _load_accelerator():  # noqa: ANN202 (a module or None)
    """_fastclean set up on the Lexbor inside selectolax's module; None (the pure-Python cleaner runs
    alone) when it was not built, when CV_PIPELINE_PURE_PYTHON_CLEANER=1, or when selectolax's Lexbor
    lacks a function it needs."""
    if os.environ.get("CV_PIPELINE_PURE_PYTHON_CLEANER", "") not in ("", "0"):
        return None
    try:
        from cv_pipeline.curation import _fastclean
        import selectolax.lexbor as lexbor_module
    except ImportError:
        return None
    fc = _fastclean
    markers = {_tag_id(tag): (before.encode(), after.encode()) for tag, (before, after) in _AROUND.items()}
    kinds = {
        _BLOCKQUOTE_ID: fc.QUOTE, _tag_id("ol"): fc.OL, _IMG_ID: fc.IMG, _CODE_ID: fc.CODE,
        **{_tag_id(t): fc.DROP for t in _DROP_TAGS},
    }
    try:
        fc.setup(lexbor_module.__file__, markers, kinds, _char_rule)
    except (ImportError, ValueError):
        return None
    # A different selectolax could parse or take text differently from what the C code assumes: it must give
    # the Python passes' answer on these bodies (one of each structure), or it stays off.
    for body in _CANARIES:
        for mode in ("ascii", "unicode"):
            conv = _convert(body, CleaningConfig(normalization=mode), fast=False)
            if fc.clean(body, mode == "ascii") != (conv.text, conv.has_pre, conv.images_dropped, conv.chars_normalized):
                return None
    return fc


_CANARIES = (
    "<p>One <b>two</b>\n  three</p><div>caf\u00e9 \u2014 \u03c3\u00b2<img src=x></div><blockquote>q</blockquote>",
    "<ol start='3'><li>a<ul><li>b</li></ul></li><li></li><li>c<br>d</li></ol><hr><h2>h</h2>",
    "<table><caption>c</caption><tr><th>k</th><td><p>v</p></td></tr></table><pre>  x\n\n y </pre>",
    "<p>$$a\n  b$$ <code>$x$</code> a<!-- c -->b</p>",
)


def accelerated() -> bool:
    """Whether the C accelerator runs (else the pure-Python cleaner does everything)."""
    return _ACCEL is not None


def _convert(html: str, config: CleaningConfig, runs_pass: bool = True, fast: bool = True) -> _Converted:
    conv = _Converted("")
    if not html:
        return conv
    if not isinstance(html, str):
        html = html.decode("utf-8", "replace") if isinstance(html, (bytes, bytearray)) else str(html)
    if _too_deep(html):
        _fallback(html, conv, config)
        return conv
    if fast and _ACCEL is not None:
        done = _ACCEL.clean(html, config.normalization == "ascii")
        if done is not None:
            conv.text, conv.has_pre, conv.images_dropped, conv.chars_normalized = done
            return conv
    html, root, find_notices, runs = _tree_pass(html, runs_pass)
    if runs is not None:
        text, images, has_pre, markers = runs
        text, changed = normalize_chars(text, config.normalization)
        laid_out = _join_runs(text) if markers else _join_blocks(text)
        if laid_out is not None:
            conv.text, conv.chars_normalized, conv.images_dropped, conv.has_pre = laid_out, changed, images, has_pre
            return conv
        root = _parse_into_container(html)  # the runs pass changed the tree: start again
    marked = _mark(root, conv, find_notices, "$$" in html)
    if not marked:
        return conv
    conv.has_pre = "\x00X" in marked
    marked, conv.chars_normalized = normalize_chars(marked, config.normalization)
    conv.text = _lay_out(marked)
    return conv


_DEFAULT = CleaningConfig()
_ACCEL = _load_accelerator()  # after _convert, which its canaries use


def html_to_text(html: str, config: CleaningConfig | None = None) -> str:
    """Rules 2-4 on one post body: notices removed, markup stripped, structure kept, characters normalised.

    Never raises on any `str` (lone surrogates, unclosed or deeply nested tags, huge entities)
    and runs in time linear in the input.
    """
    return _convert(html, config or _DEFAULT).text


def clean_title(title: str, config: CleaningConfig | None = None) -> str:
    """A plain-text title (entities already decoded by the source) normalised like a body."""
    config = config or _DEFAULT
    if not title:
        return ""
    if not title.isascii():
        title = title.encode("utf-8", "surrogatepass").decode("utf-8", "replace").replace("\ufffd", "")
    text, _ = normalize_chars(title, config.normalization)
    return _WS.sub(" ", text).strip()


def has_code_block(html: str) -> bool:
    """Rule 1: does the body contain a `<pre>` code block? (Inline `<code>` does not count.)"""
    if not html or not _PRE_TAG.search(html):  # most bodies: one regex scan, no parse
        return False
    return _convert(html, _DEFAULT).has_pre


# --------------------------------------------------------------------------------------------
# Pairs and batches (rules 1 and 5)


def clean_pair(
    question_title: str, question_html: str, answer_html: str, config: CleaningConfig | None = None
) -> CleanResult:
    """All rules on one question/answer pair: the texts, or the reason the pair is dropped."""
    config = config or _DEFAULT
    title = clean_title(question_title, config)
    q = _convert(question_html, config)
    if q.has_pre:
        return CleanResult(title, None, None, "code_block", {})
    a = _convert(answer_html, config)
    if a.has_pre:
        return CleanResult(title, None, None, "code_block", {})
    changed = {
        "notices_removed": q.notices_removed + a.notices_removed,
        "chars_normalized": q.chars_normalized + a.chars_normalized,
        "elements_dropped": q.elements_dropped + a.elements_dropped,
        "images_dropped": q.images_dropped + a.images_dropped,
    }
    if not q.text or not a.text:
        return CleanResult(title, None, None, "empty", changed)
    if len(q.text) < config.min_question_chars or len(a.text) < config.min_answer_chars:
        return CleanResult(title, None, None, "too_short", changed)
    question = f"{title}\n\n{q.text}" if config.include_title and title else q.text
    return CleanResult(title, question, a.text, None, changed)


# CC BY-SA version by creation date (UTC), per Stack Exchange's licensing history.
_CC_3_FROM = int(datetime(2011, 4, 8, tzinfo=timezone.utc).timestamp())
_CC_4_FROM = int(datetime(2018, 5, 2, tzinfo=timezone.utc).timestamp())


def infer_license(content_license: str | None, creation_date: int | None) -> str:
    """The post's own licence, else the one in force on its creation date, else "unknown"."""
    if content_license and content_license.strip():
        return content_license.strip()
    if creation_date is None:
        return "unknown"
    if creation_date < _CC_3_FROM:
        return "CC BY-SA 2.5"
    if creation_date < _CC_4_FROM:
        return "CC BY-SA 3.0"
    return "CC BY-SA 4.0"


COUNT_KEYS = (
    "input", "no_answer", "dropped_duplicate", "dropped_code_block", "dropped_empty", "dropped_too_short",
    "dropped_duplicate_text", "kept", "notices_removed", "chars_normalized", "pairs_normalized",
    "elements_dropped", "images_dropped",
)


def clean_batch(
    raw_questions: Iterable[RawQuestion], config: CleaningConfig | None = None
) -> tuple[list[dict], dict[str, int]]:
    """Clean a batch; return the kept rows and how many pairs each rule dropped or changed.

    input = no_answer + dropped_duplicate + dropped_code_block + dropped_empty + dropped_too_short
    + dropped_duplicate_text + kept. The "changed" counters (notices_removed, chars_normalized,
    pairs_normalized, elements_dropped, images_dropped) cover kept pairs only.
    """
    config = config or _DEFAULT
    counts = dict.fromkeys(COUNT_KEYS, 0)
    rows: list[dict] = []
    seen_ids: set[int] = set()
    seen_texts: set[str] = set()
    for q in raw_questions:
        counts["input"] += 1
        if q.question_id in seen_ids:
            counts["dropped_duplicate"] += 1
            continue
        seen_ids.add(q.question_id)
        answer = q.top_answer or pick_top_answer(q.answers)
        if answer is None:
            counts["no_answer"] += 1
            continue
        res = clean_pair(q.title, q.body_html, answer.body_html, config)
        if res.dropped_reason is not None:
            counts[f"dropped_{res.dropped_reason}"] += 1
            continue
        assert res.question is not None and res.answer is not None
        if res.question in seen_texts:  # the same question posted twice under two ids
            counts["dropped_duplicate_text"] += 1
            continue
        seen_texts.add(res.question)
        counts["kept"] += 1
        for key, n in res.changed_by.items():
            counts[key] += n
        counts["pairs_normalized"] += res.changed_by["chars_normalized"] > 0
        rows.append(
            {
                "question_id": q.question_id,
                "answer_id": answer.answer_id,
                "accepted_answer_id": q.accepted_answer_id,
                "rank": q.rank,
                "question_score": q.score,
                "answer_score": answer.score,
                "tags": list(q.tags),
                "title": res.title,
                "question": res.question,
                "answer": res.answer,
                "link": q.link,
                "license": infer_license(q.content_license, q.creation_date),
                "answer_license": infer_license(answer.content_license, answer.creation_date),
                "creation_date": q.creation_date,
            }
        )
    return rows, counts
