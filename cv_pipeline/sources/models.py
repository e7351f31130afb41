"""The raw records every source produces, and what a raw batch file holds.

Owner ids travel (for attribution links); owner names never do (no personal data in the text).
Times are Unix epoch seconds (UTC), as the Stack Exchange API gives them.
"""

from __future__ import annotations

from pydantic import BaseModel, Field


class RawAnswer(BaseModel):
    answer_id: int
    score: int
    is_accepted: bool = False
    body_html: str = Field(description="Answer body exactly as the site stored it (HTML).")
    creation_date: int | None = None
    owner_user_id: int | None = None
    content_license: str | None = None


class RawQuestion(BaseModel):
    question_id: int
    rank: int = Field(description="0-based position in the site's ranking by score (sort=votes, desc).")
    title: str = Field(description="Plain title (HTML entities already decoded).")
    body_html: str
    score: int
    tags: list[str] = []
    creation_date: int | None = None
    last_activity_date: int | None = None
    closed_date: int | None = None
    closed_reason: str | None = None
    locked_date: int | None = None
    community_owned_date: int | None = None
    content_license: str | None = None
    link: str
    owner_user_id: int | None = None
    answer_count: int = 0
    accepted_answer_id: int | None = None
    top_answer: RawAnswer | None = Field(None, description="The highest-voted answer (ties: accepted, then oldest).")
    answers: list[RawAnswer] = Field(default_factory=list, description="All answers, when the source was asked to keep them.")


class SourcePage(BaseModel):
    """One page of questions in ranking order, as a source hands it over."""

    page: int = Field(description="1-based page number.")
    page_size: int
    questions: list[RawQuestion]
    has_more: bool
    quota_remaining: int | None = None
    quota_max: int | None = None
    requests: int = Field(0, description="HTTP requests this page cost (retries included).")


class BatchStats(BaseModel):
    requests: int = 0
    pages: int = 0
    pages_resumed: int = Field(0, description="Pages taken from an earlier interrupted run's checkpoint.")
    quota_remaining: int | None = None
    elapsed_s: float = 0.0


class RawBatch(BaseModel):
    """What one `raw_question_batches` partition file holds."""

    partition_key: str
    source: str = Field(description="Which source produced it (sample_site, api, dump) and where from, without secrets.")
    site: str
    start_rank: int
    stop_rank: int
    questions: list[RawQuestion]
    stats: BatchStats

    @property
    def answer_count(self) -> int:
        return sum(1 for q in self.questions if q.top_answer is not None)


def pick_top_answer(answers: list[RawAnswer]) -> RawAnswer | None:
    """Highest score wins; ties go to the accepted answer, then to the oldest (lowest id).

    Which answer is cleaned depends on this: a change here changes the cleaned pairs, so bump
    `curation.cleaner.CLEANER_VERSION` with it (that marks cleaned_qa_pairs and what follows stale).
    """
    if not answers:
        return None
    return max(answers, key=lambda a: (a.score, a.is_accepted, -a.answer_id))
