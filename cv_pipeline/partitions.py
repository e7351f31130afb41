"""The 5,000-question ranges that partition `raw_question_batches` (Dagster-free)."""

from __future__ import annotations

from dataclasses import dataclass

PARTITION_SIZE = 5_000
#: 8 partitions cover the report's 39,668 questions.
N_PARTITIONS = 8


@dataclass(frozen=True)
class RankRange:
    start: int  # inclusive, 0-based rank
    stop: int  # exclusive

    @property
    def key(self) -> str:
        return f"{self.start:05d}-{self.stop - 1:05d}"


def partition_keys(n: int = N_PARTITIONS, size: int = PARTITION_SIZE) -> list[str]:
    return [RankRange(i * size, (i + 1) * size).key for i in range(n)]


def parse_partition_key(key: str, size: int = PARTITION_SIZE, n: int = N_PARTITIONS) -> RankRange:
    """``"05000-09999"`` -> RankRange(5000, 10000); anything else is a clear error."""
    valid = partition_keys(n, size)
    if key not in valid:
        raise ValueError(
            f"partition key {key!r} is not one of the {n} ranges of {size:,} questions "
            f"({valid[0]} ... {valid[-1]}); pick one of those"
        )
    start, end = (int(x) for x in key.split("-"))
    return RankRange(start, end + 1)
