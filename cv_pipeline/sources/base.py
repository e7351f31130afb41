"""The one interface every question source implements, and the errors they raise."""

from __future__ import annotations

import abc

from cv_pipeline.sources.models import SourcePage


class SourceError(RuntimeError):
    """A source failed in a way a retry will not fix; the message names the input and the fix."""


class SourceConfigError(SourceError, ValueError):
    """A setting of the source is wrong (its URL, site name, page size, request rate): fix it, then re-run."""


class TransientSourceError(SourceError):
    """The source kept failing with errors a later retry may fix (throttling, 5xx, dropped connections)."""


class QuotaExhausted(SourceError):
    """The daily request quota is spent. ``resume_at`` is when to try again (epoch seconds)."""

    def __init__(self, message: str, resume_at: float | None = None):
        super().__init__(message)
        self.resume_at = resume_at


class QuestionSource(abc.ABC):
    """Questions ranked by score (highest first), served in fixed-size pages."""

    #: Questions per page; partitions are whole numbers of pages.
    page_size: int = 100
    #: Whether each question keeps every answer (else only the highest-voted one).
    keep_all_answers: bool = False

    @abc.abstractmethod
    def describe(self) -> str:
        """Where the data comes from, for metadata and logs (never contains a secret)."""

    @abc.abstractmethod
    def site(self) -> str:
        """The Stack Exchange site name (e.g. ``stats``)."""

    def snapshot(self) -> str:
        """Which version of the data this is, where the source can tell (a dump file's size and mtime): pages
        saved from another version are not resumed. Empty for a live source."""
        return ""

    @abc.abstractmethod
    def fetch_page(self, page: int) -> SourcePage:
        """Return page ``page`` (1-based) of the ranking, each question with its answers picked."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections or files."""

    def __enter__(self) -> QuestionSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
