"""Questions from a Stack Exchange data dump (``Posts.xml``), streamed with bounded memory.

A site's ``Posts.xml`` holds every question and answer, one ``<row .../>`` each, sorted by id,
not by score. Ranking therefore takes two streaming passes: pass 1 keeps only ``(score, id)``
of every question and sorts them; pass 2 collects the questions of one window of ranks and
their answers. A window is a whole partition (5,000 ranks by default), so collecting the 50
pages of a partition in order streams the file once, not 50 times.

Ranking, like the API's ``sort=votes``: score descending; ties go to the lower question id
(the older question), so the order is deterministic.

Safety: the parser is expat driven directly. Real dumps carry no DTD; a document whose DOCTYPE
has an internal subset (where entity declarations live, the "billion laughs" and external-entity
attacks) is refused before any entity is declared, and an external DTD (``<!DOCTYPE posts SYSTEM
'posts.dtd'>``, seen in one real sample) is never fetched or read.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import json
import lzma
import pyexpat
import re
import shutil
import tempfile
import zipfile
import zlib
from array import array
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO

from cv_pipeline.atomic import exclusive, write_json
from cv_pipeline.partitions import PARTITION_SIZE
from cv_pipeline.sources.base import QuestionSource, SourceError
from cv_pipeline.sources.models import RawAnswer, RawQuestion, SourcePage, pick_top_answer

EXPECTED = "expected the Posts.xml of a Stack Exchange data dump"
_CHUNK = 1 << 20  # bytes fed to expat at a time: bounds the rows buffered between yields

# Hex references XML 1.0 forbids (the exporter's form: "&#xA;" newlines are everywhere, so this must not
# call back into Python for the allowed ones), and every decimal reference (rare; checked one by one).
_SUSPECT_CHAR_REF = re.compile(
    rb"&#(?:x0*(?:[0-8BbCcEeFf]|1[0-9A-Fa-f]|[Dd][89A-Fa-f][0-9A-Fa-f]{2}|[Ff]{3}[EeFf]"
    rb"|(?:1[1-9A-Fa-f]|[2-9A-Fa-f][0-9A-Fa-f])[0-9A-Fa-f]{4}|[1-9A-Fa-f][0-9A-Fa-f]{6,})|0*([0-9]{1,12})|[0-9]{13,});"
)
# The end of a chunk that may be the start of a character reference (of any length: "&#x0000000E;" is one too).
_UNFINISHED_REF = re.compile(rb"&(?:#(?:[xX][0-9A-Fa-f]*+|[0-9]*+)?)?")


def xml_allows(cp: int) -> bool:
    """XML 1.0's Char production."""
    return cp in (0x9, 0xA, 0xD) or 0x20 <= cp <= 0xD7FF or 0xE000 <= cp <= 0xFFFD or 0x10000 <= cp <= 0x10FFFF


def _xml_safe(data: bytes) -> tuple[bytes, int]:
    """``data`` without the character references XML 1.0 forbids, and how many it held: to C0 controls other
    than tab, LF and CR (Stack Exchange's exporter writes a control character in a post as "&#x0E;"), to
    surrogates, U+FFFE/FFFF or past U+10FFFF. Expat rejects each of them, so a single one would stop every
    partition; the cleaner would remove these characters anyway. (A raw control byte is not the exporter's
    doing: that file is damaged, and expat's error says where.)"""
    dropped = 0

    def drop(m: re.Match[bytes]) -> bytes:
        nonlocal dropped
        decimal = m.group(1)
        if decimal is not None and xml_allows(int(decimal)):
            return m.group()
        dropped += 1
        return b""

    refs = data.count(b"&#")
    if refs and refs != data.count(b"&#xA;") + data.count(b"&#xD;"):  # anything but the exporter's line breaks
        data = _SUSPECT_CHAR_REF.sub(drop, data)
    return data, dropped


# Licence by creation date where the dump has no ContentLicense attribute (meta.stackexchange.com/q/347758).
_CC_BY_SA_3_FROM = int(datetime(2011, 4, 8, tzinfo=timezone.utc).timestamp())
_CC_BY_SA_4_FROM = int(datetime(2018, 5, 2, tzinfo=timezone.utc).timestamp())

# Sites whose host is not <name>.stackexchange.com (the API's site parameter -> host).
_OWN_DOMAINS = {
    "stackoverflow": "stackoverflow.com",
    "serverfault": "serverfault.com",
    "superuser": "superuser.com",
    "askubuntu": "askubuntu.com",
    "stackapps": "stackapps.com",
    "mathoverflow": "mathoverflow.net",
}

_ANGLE_TAG = re.compile(r"<([^<>]+)>")


@dataclass(frozen=True)
class DumpCounts:
    """What pass 1 saw: rows by kind."""

    questions: int
    answers: int
    other: int


def default_link_base(site: str) -> str:
    """``stats`` -> ``https://stats.stackexchange.com``; a host name is used as it is."""
    if re.search(r"\.(com|net|org)$", site):
        return f"https://{site}"
    meta, name = (True, site.removeprefix("meta.")) if site.startswith("meta.") else (False, site)
    if name in _OWN_DOMAINS:
        return f"https://{'meta.' if meta else ''}{_OWN_DOMAINS[name]}"
    return f"https://{site}.stackexchange.com"


def parse_tags(raw: str | None) -> list[str]:
    """Both dump formats, ``<a><b>`` (before 2024) and ``|a|b|`` (2024 on), give ``["a", "b"]``."""
    if not raw:
        return []
    if raw.startswith("<"):
        return _ANGLE_TAG.findall(raw)
    return [t for t in raw.split("|") if t]


def parse_date(raw: str | None) -> int | None:
    """Dump timestamps are UTC without a zone (``2014-05-14T08:11:02.157``) -> epoch seconds."""
    if not raw:
        return None
    try:
        # Seconds are enough (the API's resolution); the fraction's width varies between dumps.
        return int(datetime.strptime(raw[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc).timestamp())
    except ValueError:
        raise ValueError(f"date {raw!r} is not of the dump's form 2014-05-14T08:11:02.157") from None


def license_for(content_license: str | None, creation_date: int | None) -> str | None:
    """The row's own ContentLicense, else the one in force on its creation date."""
    if content_license:
        return content_license
    if creation_date is None:
        return None
    if creation_date < _CC_BY_SA_3_FROM:
        return "CC BY-SA 2.5"
    return "CC BY-SA 3.0" if creation_date < _CC_BY_SA_4_FROM else "CC BY-SA 4.0"


class _RowReader:
    """Push-parser callbacks: checks the document shape and buffers ``<row>`` attribute dicts."""

    def __init__(self, path: Path, parser: pyexpat.XMLParserType):
        self.path = path
        self.parser = parser
        self.depth = 0
        self.seen_root = False
        self.rows: list[dict[str, str]] = []

    def doctype(self, name: str, sysid: str | None, pubid: str | None, has_internal_subset: int) -> None:
        if has_internal_subset:
            raise SourceError(
                f"{self.path}: refusing a DOCTYPE with an internal subset (entity declarations can "
                f"expand without bound); real dumps have no DTD — {EXPECTED}"
            )

    def entity(self, *args: object) -> None:  # unreachable after doctype(), kept as a second lock
        raise SourceError(f"{self.path}: refusing an XML entity declaration; {EXPECTED}")

    def start(self, name: str, attrs: dict[str, str]) -> None:
        self.depth += 1
        if self.depth == 1:
            self.seen_root = True
            if name != "posts":
                raise SourceError(f"{self.path}: the root element is <{name}>, not <posts>; {EXPECTED}")
        elif self.depth == 2:
            if name != "row":
                raise SourceError(
                    f"{self.path}: line {self.parser.CurrentLineNumber}: <posts> holds <{name}>, not <row>; {EXPECTED}"
                )
            self.rows.append(attrs)

    def end(self, name: str) -> None:
        self.depth -= 1


def _version_key(file: Path) -> str:
    """Names one version of a file (its path, size and mtime): what is derived from it is kept under this."""
    st = file.stat()
    return hashlib.sha256(f"{file.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]


class DumpSource(QuestionSource):
    """A data dump's questions in score order, served in pages like the API."""

    def __init__(
        self,
        path: Path,
        site: str = "stats",
        page_size: int = 100,
        keep_all_answers: bool = False,
        *,
        link_base: str | None = None,
        window_size: int = PARTITION_SIZE,
        cache_dir: Path | None = None,
        extract_dir: Path | None = None,
    ):
        """``path``: a Posts.xml, a folder holding one, or an archive (.zip/.gz/.bz2/.xz; .7z with py7zr).

        ``window_size``: ranks collected per pass 2 (rounded to whole pages); ``cache_dir``: where to keep
        pass 1's ranking between processes (keyed by file size and mtime); ``extract_dir``: where a .7z
        archive's Posts.xml is extracted and kept for later processes (published by a rename, keyed by the
        archive's size and mtime); by default a temporary folder, removed by ``close()``.
        """
        if page_size < 1:
            raise ValueError(f"page_size must be at least 1, got {page_size}")
        self.path = Path(path)
        self._site = site
        self.page_size = page_size
        self.keep_all_answers = keep_all_answers
        self.link_base = (link_base or default_link_base(site)).rstrip("/")
        self.window_pages = max(1, window_size // page_size)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._extract_dir = Path(extract_dir) if extract_dir else None
        self._own_extract_dir: Path | None = None
        self._xml_path: Path | None = None  # the plain Posts.xml once a .7z was extracted
        self._order: array | None = None  # question ids in rank order
        self._counts: DumpCounts | None = None
        self._window: int | None = None
        self._pages: dict[int, SourcePage] = {}
        #: Full streaming passes over the file so far (tests and metadata read it).
        self.passes = 0
        #: Characters XML 1.0 forbids (control characters written as "&#x0E;", ...) dropped while reading.
        self.invalid_chars_dropped = 0
        if not self.path.exists():
            raise SourceError(f"{self.path}: no such file; {EXPECTED} (or its .zip/.7z/.gz archive)")

    # -- QuestionSource ------------------------------------------------------------------------
    def describe(self) -> str:
        # The absolute path: the same dump named relatively in one run and absolutely in another is one source.
        return f"dump:{self.path.resolve()} (site {self._site})"

    def site(self) -> str:
        return self._site

    def snapshot(self) -> str:
        # Not in describe(): batches of two downloads of one dump are one source for chat_dataset.
        # The file read, as for the ranking cache: a folder's own mtime does not change when its
        # Posts.xml is overwritten in place, and checkpoints of the old dump must not be resumed.
        return _version_key(self._file())

    def fetch_page(self, page: int) -> SourcePage:
        if page < 1:
            raise ValueError(f"page numbers start at 1, got {page}")
        order = self.ranked_question_ids()
        start = (page - 1) * self.page_size
        if start >= len(order):
            return SourcePage(page=page, page_size=self.page_size, questions=[], has_more=False)
        window = (page - 1) // self.window_pages
        if window != self._window:
            # Only one window is held at a time: memory stays at one partition's worth of posts.
            self._pages = self._collect_window(window, order)
            self._window = window
        return self._pages[page]

    def close(self) -> None:
        self._pages = {}
        self._window = None
        if self._own_extract_dir is not None:
            shutil.rmtree(self._own_extract_dir, ignore_errors=True)
            self._own_extract_dir = None
            self._xml_path = None

    # -- pass 1: the ranking ---------------------------------------------------------------------
    def counts(self) -> DumpCounts:
        self.ranked_question_ids()
        assert self._counts is not None
        return self._counts

    def ranked_question_ids(self) -> array:
        """Every question id, highest score first (ties: lower id first). Pass 1, cached."""
        if self._order is not None:
            return self._order
        if self._load_cached_ranking():
            assert self._order is not None
            return self._order
        keys: list[tuple[int, int]] = []
        n_answers = n_other = 0
        for row in self._rows():
            kind = row.get("PostTypeId")
            if kind == "1":
                keys.append((-self._score(row), self._id(row, "Id")))
            elif kind == "2":
                n_answers += 1
            else:
                n_other += 1
        keys.sort()
        self._order = array("q", (qid for _, qid in keys))
        self._counts = DumpCounts(questions=len(keys), answers=n_answers, other=n_other)
        self._save_cached_ranking()
        return self._order

    def _cache_file(self) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"dump_ranking_{_version_key(self._file())}.json"

    def _load_cached_ranking(self) -> bool:
        cache = self._cache_file()
        if cache is None or not cache.is_file():
            return False
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            self._order = array("q", data["order"])
            self._counts = DumpCounts(**data["counts"])
        except (ValueError, KeyError, TypeError):
            return False  # a damaged cache is only a lost shortcut: rank again
        return True

    def _save_cached_ranking(self) -> None:
        cache = self._cache_file()
        if cache is not None and self._order is not None and self._counts is not None:
            counts = {"questions": self._counts.questions, "answers": self._counts.answers, "other": self._counts.other}
            write_json(cache, {"source": str(self.path), "order": list(self._order), "counts": counts}, indent=None)

    # -- pass 2: one window of ranks -------------------------------------------------------------
    def _collect_window(self, window: int, order: array) -> dict[int, SourcePage]:
        first_page = window * self.window_pages + 1
        lo = (first_page - 1) * self.page_size
        hi = min(len(order), lo + self.window_pages * self.page_size)
        rank_of = {order[r]: r for r in range(lo, hi)}
        questions: dict[int, dict[str, str]] = {}
        # Per question: every answer (keep_all_answers) or only those tied at the best score so far,
        # which is all pick_top_answer needs, since score comes first in its key.
        answers: dict[int, list[dict[str, str]]] = {}
        for row in self._rows():
            kind = row.get("PostTypeId")
            if kind == "1":
                qid = self._id(row, "Id")
                if qid in rank_of:
                    questions[qid] = row
            elif kind == "2":
                parent = self._opt_int(row, "ParentId")
                if parent not in rank_of:
                    continue
                kept = answers.setdefault(parent, [])
                if self.keep_all_answers or not kept:
                    kept.append(row)
                    continue
                score, best = self._score(row), self._score(kept[0])
                if score > best:
                    kept[:] = [row]
                elif score == best:
                    kept.append(row)
        by_page: dict[int, list[RawQuestion]] = {}
        for rank in range(lo, hi):
            qid = order[rank]
            row = questions.pop(qid, None)
            if row is None:
                raise SourceError(
                    f"{self.path}: question {qid} was ranked but is gone on the second pass; the file "
                    "changed while being read (or a stale ranking cache was used): rerun on a finished file"
                )
            question = self._question(row, rank, answers.pop(qid, []))
            by_page.setdefault(rank // self.page_size + 1, []).append(question)
        total = len(order)
        return {
            page: SourcePage(page=page, page_size=self.page_size, questions=qs, has_more=page * self.page_size < total)
            for page, qs in by_page.items()
        }

    def _question(self, row: dict[str, str], rank: int, answer_rows: list[dict[str, str]]) -> RawQuestion:
        qid = self._id(row, "Id")
        accepted = self._opt_int(row, "AcceptedAnswerId")
        found = sorted((self._answer(a, accepted) for a in answer_rows), key=lambda a: (-a.score, a.answer_id))
        created = self._date(row, "CreationDate")
        site_count = self._opt_int(row, "AnswerCount")
        return RawQuestion(
            question_id=qid,
            rank=rank,
            # Attribute values arrive decoded by the XML parser: this is the title as the site shows
            # it. Unescaping it again would turn a literal "&lt;" typed by the author into "<".
            title=row.get("Title", ""),
            body_html=row.get("Body", ""),
            score=self._score(row),
            tags=parse_tags(row.get("Tags")),
            creation_date=created,
            last_activity_date=self._date(row, "LastActivityDate"),
            closed_date=self._date(row, "ClosedDate"),
            locked_date=self._date(row, "LockedDate"),
            community_owned_date=self._date(row, "CommunityOwnedDate"),
            content_license=license_for(row.get("ContentLicense"), created),
            link=f"{self.link_base}/questions/{qid}",
            owner_user_id=self._opt_int(row, "OwnerUserId"),
            # The site's count (as the API reports it); a partial dump may hold fewer answers.
            answer_count=len(answer_rows) if site_count is None else site_count,
            accepted_answer_id=accepted,
            top_answer=pick_top_answer(found),
            answers=found if self.keep_all_answers else [],
        )

    def _answer(self, row: dict[str, str], accepted_id: int | None) -> RawAnswer:
        aid = self._id(row, "Id")
        created = self._date(row, "CreationDate")
        return RawAnswer(
            answer_id=aid,
            score=self._score(row),
            is_accepted=aid == accepted_id,
            body_html=row.get("Body", ""),
            creation_date=created,
            owner_user_id=self._opt_int(row, "OwnerUserId"),
            content_license=license_for(row.get("ContentLicense"), created),
        )

    def _id(self, row: dict[str, str], key: str) -> int:
        value = self._opt_int(row, key)
        if value is None:
            raise SourceError(f"{self.path}: a <row> has no {key} attribute (row Id={row.get('Id')}); {EXPECTED}")
        return value

    def _opt_int(self, row: dict[str, str], key: str) -> int | None:
        raw = row.get(key)
        if not raw:
            return None
        try:
            return int(raw)
        except ValueError:
            raise SourceError(
                f"{self.path}: row Id={row.get('Id')} has {key}={raw!r}, not a whole number; {EXPECTED}"
            ) from None

    def _score(self, row: dict[str, str]) -> int:
        return self._opt_int(row, "Score") or 0

    def _date(self, row: dict[str, str], key: str) -> int | None:
        try:
            return parse_date(row.get(key))
        except ValueError as exc:
            raise SourceError(f"{self.path}: row Id={row.get('Id')} {key}: {exc}") from None

    # -- streaming -------------------------------------------------------------------------------
    def _rows(self) -> Iterator[dict[str, str]]:
        """Every ``<row>``'s attributes, in file order, holding at most one chunk's rows at a time."""
        self.passes += 1
        parser = pyexpat.ParserCreate()
        # Never read an external DTD or parameter entity (no file or network access from a DOCTYPE).
        parser.SetParamEntityParsing(pyexpat.XML_PARAM_ENTITY_PARSING_NEVER)
        reader = _RowReader(self.path, parser)
        parser.StartDoctypeDeclHandler = reader.doctype
        parser.EntityDeclHandler = reader.entity
        parser.StartElementHandler = reader.start
        parser.EndElementHandler = reader.end
        carry = b""  # a character reference cut by the chunk boundary waits for the rest of it
        dropped_this_pass = 0
        with self._open() as stream:
            while True:
                try:
                    chunk = stream.read(_CHUNK)
                except (OSError, EOFError, zipfile.BadZipFile, lzma.LZMAError, zlib.error) as exc:
                    raise self._damaged(exc) from exc
                data, carry = carry + chunk, b""
                if chunk:
                    cut = data.rfind(b"&")
                    if cut >= 0 and len(data) - cut <= _CHUNK and _UNFINISHED_REF.fullmatch(data, cut) is not None:
                        data, carry = data[:cut], data[cut:]
                data, dropped = _xml_safe(data)
                dropped_this_pass += dropped
                # Every pass reads the same file: the count is one pass's, not the sum over passes.
                self.invalid_chars_dropped = max(self.invalid_chars_dropped, dropped_this_pass)
                try:
                    parser.Parse(data, not chunk)
                except pyexpat.ExpatError as exc:
                    raise self._xml_error(exc, reader, at_end=not chunk) from None
                yield from reader.rows
                reader.rows.clear()
                if not chunk:
                    break
        if not reader.seen_root:
            raise SourceError(f"{self.path}: no XML element found; {EXPECTED}")

    def _damaged(self, exc: BaseException) -> SourceError:
        return SourceError(f"{self.path}: the archive is damaged or truncated ({exc}); download it again")

    def _xml_error(self, exc: pyexpat.ExpatError, reader: _RowReader, at_end: bool) -> SourceError:
        where = f"line {exc.lineno}, column {exc.offset}: {pyexpat.ErrorString(exc.code)}"
        if not reader.seen_root:
            return SourceError(f"{self.path}: not XML ({where}); {EXPECTED}")
        if at_end and reader.depth > 0:
            return SourceError(
                f"{self.path}: the XML stops before </posts> ({where}); the file is truncated — "
                "download or extract it again"
            )
        return SourceError(f"{self.path}: malformed XML ({where}); {EXPECTED}")

    @contextlib.contextmanager
    def _open(self) -> Iterator[IO[bytes]]:
        with open(self._plain_xml() or self._file(), "rb") as raw:
            magic = raw.read(6)
            raw.seek(0)
            if magic.startswith(b"PK\x03\x04"):
                try:
                    archive = zipfile.ZipFile(raw)
                    member = archive.open(self._zip_member(archive))
                except (OSError, EOFError, zipfile.BadZipFile) as exc:
                    raise self._damaged(exc) from exc
                with archive, member:
                    yield member
            elif magic.startswith(b"\x1f\x8b"):
                with gzip.open(raw) as stream:
                    yield stream
            elif magic.startswith(b"BZh"):
                with bz2.open(raw) as stream:
                    yield stream
            elif magic.startswith(b"\xfd7zXZ\x00"):
                with lzma.open(raw) as stream:
                    yield stream
            else:
                yield raw

    def _file(self) -> Path:
        """The file itself, or the Posts.xml inside a folder (an extracted site archive)."""
        if not self.path.is_dir():
            return self.path
        inner = next((p for p in self.path.iterdir() if p.name.lower() == "posts.xml"), None)
        if inner is None:
            raise SourceError(f"{self.path}: a folder without a Posts.xml; {EXPECTED}")
        return inner

    def _zip_member(self, archive: zipfile.ZipFile) -> str:
        for name in archive.namelist():
            if name.rsplit("/", 1)[-1].lower() == "posts.xml":
                return name
        raise SourceError(f"{self.path}: the zip archive holds no Posts.xml ({archive.namelist()[:5]}...); {EXPECTED}")

    def _plain_xml(self) -> Path | None:
        """A .7z archive is extracted once (py7zr cannot stream one member); None for other inputs."""
        if self._xml_path is not None:
            return self._xml_path
        if self.path.is_dir():
            return None
        with open(self.path, "rb") as fh:
            if fh.read(6) != b"7z\xbc\xaf\x27\x1c":
                return None
        try:
            import py7zr  # noqa: F401  (optional: only .7z archives need it)
        except ImportError:
            raise SourceError(
                f"{self.path}: a .7z archive, and py7zr is not installed; extract Posts.xml first "
                "(7z x ARCHIVE Posts.xml) and pass its path, or install py7zr"
            ) from None
        kept = self._kept_extraction()
        if kept is None:
            self._own_extract_dir = Path(tempfile.mkdtemp(prefix="cv_pipeline_dump_"))
            self._xml_path = self._extract(self._own_extract_dir, None)
            return self._xml_path
        kept.parent.mkdir(parents=True, exist_ok=True)
        # One process at a time per extract_dir: a second one waits, then reads what the first published.
        with exclusive(kept.parent / ".lock"):
            inner = next((p for p in kept.rglob("*") if p.name.lower() == "posts.xml" and p.is_file()), None)
            if inner is None:  # not extracted yet (same size and mtime)
                for leftover in kept.parent.glob(".extracting_*"):  # a process killed while extracting
                    shutil.rmtree(leftover, ignore_errors=True)
                inner = self._extract(Path(tempfile.mkdtemp(prefix=".extracting_", dir=kept.parent)), kept)
        self._xml_path = inner
        return inner

    def _extract(self, target: Path, kept: Path | None) -> Path:
        """Extract Posts.xml into ``target``; with ``kept``, publish ``target`` there by one rename."""
        import py7zr
        import py7zr.exceptions

        damaged = (OSError, EOFError, lzma.LZMAError, py7zr.exceptions.Bad7zFile, py7zr.exceptions.CrcError)
        try:
            with py7zr.SevenZipFile(self.path, mode="r") as archive:
                member = next((n for n in archive.getnames() if n.rsplit("/", 1)[-1].lower() == "posts.xml"), None)
                if member is None:
                    raise SourceError(f"{self.path}: the .7z archive holds no Posts.xml; {EXPECTED}")
                archive.extract(path=target, targets=[member])
        except BaseException as exc:
            shutil.rmtree(target, ignore_errors=True)  # never leave a half-extracted Posts.xml to be read
            if isinstance(exc, damaged):
                raise self._damaged(exc) from exc
            raise
        if kept is None:
            return target / member
        # Published whole, by one rename; older extractions of this archive (another size or mtime) go.
        for old in kept.parent.glob(f"{self.path.name}-*"):
            shutil.rmtree(old, ignore_errors=True)
        target.rename(kept)
        return kept / member

    def _kept_extraction(self) -> Path | None:
        """Where ``extract_dir`` keeps this archive's Posts.xml between processes (keyed by size and mtime)."""
        if self._extract_dir is None:
            return None
        return self._extract_dir / f"{self.path.name}-{_version_key(self.path)}"
