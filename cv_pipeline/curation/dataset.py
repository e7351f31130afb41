"""Build the chat dataset from cleaned pairs (Dagster-free).

The split of a pair depends only on a hash of its question id, so a re-run, or a new partition,
never moves a pair between train, validation and test. De-duplication runs here over all
partitions at once: by question id, and by question text (the same question posted twice under two
ids, possibly ranked into different partitions, would otherwise land in two splits).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq

from cv_pipeline.atomic import atomic_dir

SPLITS = ("train", "validation", "test")
#: The columns a cleaned-pairs Parquet file must have.
REQUIRED_COLUMNS = (
    "question_id", "answer_id", "question", "answer", "question_score", "link", "license", "answer_license",
)
#: The schema of a cleaned-pairs Parquet file (the rows `cleaner.clean_batch` returns). Written
#: explicitly so that a partition that keeps no pair still has every column.
CLEANED_SCHEMA = pa.schema(
    [
        ("question_id", pa.int64()),
        ("answer_id", pa.int64()),
        ("accepted_answer_id", pa.int64()),
        ("rank", pa.int64()),
        ("question_score", pa.int64()),
        ("answer_score", pa.int64()),
        ("tags", pa.list_(pa.string())),
        ("title", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("link", pa.string()),
        ("license", pa.string()),
        ("answer_license", pa.string()),
        ("creation_date", pa.int64()),
    ]
)


@dataclass(frozen=True)
class SplitFractions:
    validation: float = 0.05
    test: float = 0.05

    def __post_init__(self) -> None:
        if not (0 <= self.validation < 1 and 0 <= self.test < 1 and self.validation + self.test < 1):
            raise ValueError(f"split fractions must be in [0, 1) and leave room for train: {self}")


def split_of(question_id: int, fractions: SplitFractions = SplitFractions()) -> str:
    """Stable split from a hash of the id (not Python's salted ``hash``)."""
    digest = hashlib.sha256(f"cv-split:{question_id}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    if u < fractions.test:
        return "test"
    if u < fractions.test + fractions.validation:
        return "validation"
    return "train"


def to_messages(question: str, answer: str) -> list[dict[str, str]]:
    """The conversational format TRL's SFTTrainer and Unsloth take."""
    return [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]


def read_cleaned(paths: Iterable[Path]) -> list[dict]:
    """Read cleaned-pairs Parquet files, checking each has the columns the dataset needs."""
    rows: list[dict] = []
    for path in paths:
        table = pq.read_table(path)
        if table.num_rows == 0:  # a partition that kept nothing (older files have no columns either)
            continue
        missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
        if missing:
            raise ValueError(
                f"{path} is not a cleaned-pairs file (missing columns {missing}): re-materialise cleaned_qa_pairs"
            )
        rows.extend(table.to_pylist())
    return rows


SOURCE_METADATA_KEY = b"cv_pipeline.source"


def with_source(schema: pa.Schema, source: str) -> pa.Schema:
    """The cleaned-pairs schema tagged with where its raw batch came from (RawBatch.source)."""
    return schema.with_metadata({**(schema.metadata or {}), SOURCE_METADATA_KEY: source.encode()})


def cleaned_sources(paths: Iterable[Path]) -> dict[Path, str | None]:
    """Each cleaned-pairs file's source, read from its Parquet footer (None: written before it was recorded)."""
    out: dict[Path, str | None] = {}
    for path in paths:
        raw = (pq.read_schema(path).metadata or {}).get(SOURCE_METADATA_KEY)
        out[path] = raw.decode() if raw is not None else None
    return out


def check_one_source(sources: dict[Path, str | None]) -> str:
    """The one source all cleaned partitions come from; ValueError naming the files when they differ.

    Partitions collected from two sources (the demo's generated sample site and the real API, when both
    profiles share a data folder) would otherwise be merged into one dataset without a word.
    """
    by_source: dict[str, list[str]] = {}
    for path, source in sources.items():
        if source is not None:
            by_source.setdefault(source, []).append(Path(path).name)
    if len(by_source) > 1:
        listed = "; ".join(f"{', '.join(names)} from {source}" for source, names in sorted(by_source.items()))
        raise ValueError(
            f"the cleaned partitions come from different sources ({listed}): re-materialise raw_question_batches "
            "and cleaned_qa_pairs for the partitions from the source you do not want, or remove their files; "
            "keep each profile's outputs apart with CV_PIPELINE_DATA_DIR"
        )
    return next(iter(by_source), "unknown")


@dataclass
class ChatDataset:
    splits: dict[str, list[dict]]
    top: list[dict]
    data_version: str
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def duplicates_dropped(self) -> int:
        return self.counts.get("duplicates_dropped", 0)

    @property
    def duplicate_texts_dropped(self) -> int:
        return self.counts.get("duplicate_texts_dropped", 0)


def answer_link(question_link: str, answer_id: int) -> str:
    """The answer's own short link on the question's site (``https://<site>/a/<id>``)."""
    parts = urlsplit(question_link)
    return f"{parts.scheme}://{parts.netloc}/a/{answer_id}"


def build_chat_dataset(
    cleaned_rows: Sequence[dict], top_n: int = 10_000, fractions: SplitFractions = SplitFractions()
) -> ChatDataset:
    """Merge, de-duplicate (by question id, then by question text; the highest-voted copy wins),
    split, and pick the top-N of train."""
    def rank_key(row: dict) -> tuple:  # best first: score, ranking position, id; then content, so no order of reading wins
        return (-row["question_score"], row.get("rank") or 0, int(row["question_id"]),
                -(row.get("answer_score") or 0), int(row["answer_id"]), row["question"], row["answer"])

    best: dict[int, dict] = {}
    for row in cleaned_rows:
        qid = int(row["question_id"])
        kept = best.get(qid)
        if kept is None or rank_key(row) < rank_key(kept):
            best[qid] = row
    duplicates = len(cleaned_rows) - len(best)
    by_text: dict[str, dict] = {}
    for row in sorted(best.values(), key=rank_key):
        by_text.setdefault(row["question"], row)
    text_duplicates = len(best) - len(by_text)
    splits: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for row in sorted(by_text.values(), key=lambda r: int(r["question_id"])):
        qid = int(row["question_id"])
        record = {
            "question_id": qid,
            "answer_id": int(row["answer_id"]),
            "question_score": int(row["question_score"]),
            "answer_score": int(row.get("answer_score") or 0),
            "tags": list(row.get("tags") or []),
            "link": row["link"],
            "answer_link": answer_link(row["link"], int(row["answer_id"])),
            "license": row["license"],
            "answer_license": row["answer_license"],
            "messages": to_messages(row["question"], row["answer"]),
        }
        splits[split_of(qid, fractions)].append(record)
    # The highest-voted train pairs, kept in question-id order like the splits: votes that only reshuffle the
    # same pairs leave the rows (and the trainer's fingerprint of them) as they were, so nothing retrains.
    top = sorted(splits["train"], key=lambda r: (-r["question_score"], r["question_id"]))[:top_n]
    top.sort(key=lambda r: r["question_id"])
    version = content_hash(splits, top)
    counts = {s: len(v) for s, v in splits.items()} | {
        "top_10k": len(top), "duplicates_dropped": duplicates, "duplicate_texts_dropped": text_duplicates,
    }
    return ChatDataset(splits=splits, top=top, data_version=version, counts=counts)


def content_hash(splits: dict[str, list[dict]], top: list[dict]) -> str:
    """A data version that changes exactly when the training data changes."""
    h = hashlib.sha256()
    for name, rows in [*sorted(splits.items()), ("top_10k", top)]:
        h.update(name.encode())
        for row in rows:
            h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
    return h.hexdigest()[:16]


SOURCE_FILE = "source.txt"  # where the rows came from: the cleaned partitions' source label


def generated_source(source: str | None) -> bool:
    """Whether a source label is the embedded sample site's ("sample_site n=... seed=..."): generated text in a
    real site's shape, whose links and licences only imitate real ones."""
    return bool(source) and source.startswith("sample_site ")


def dataset_source(dataset_dir: Path) -> str | None:
    """The source label a saved chat dataset records; None for one saved before datasets recorded it."""
    try:
        return (Path(dataset_dir) / SOURCE_FILE).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def save_chat_dataset(ds: ChatDataset, out_dir: Path, source: str = "unknown") -> Path:
    """Write a Hugging Face DatasetDict (Arrow), one JSONL per split and the data card, as one folder, atomically."""
    import datasets  # heavy import: only when saving

    from cv_pipeline.curation.datacard import write_datacard

    with atomic_dir(out_dir) as tmp:
        parts = {**ds.splits, "top_10k": ds.top}
        dd = datasets.DatasetDict({name: _to_hf(rows) for name, rows in parts.items()})
        # An empty split (a zero fraction, a tiny corpus) would be saved as no shard at all, which
        # load_from_disk cannot read back (it then fails for every split): give it one empty shard.
        quiet = datasets.are_progress_bars_disabled()
        datasets.disable_progress_bars()  # seconds of work: its bars (one per split) only bury the asset's log
        try:
            dd.save_to_disk(str(tmp / "hf"), num_shards={name: 1 for name, rows in parts.items() if not rows})
        finally:
            if not quiet:
                datasets.enable_progress_bars()
        for name, rows in parts.items():
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as fh:
                for row in rows:
                    fh.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
        (tmp / "data_version.txt").write_text(ds.data_version + "\n")
        (tmp / SOURCE_FILE).write_text(source + "\n")
        write_datacard(ds, tmp, source)
    return out_dir


# A chat row: the cleaned pair's ids, scores, tags and attribution (typed as in CLEANED_SCHEMA), the
# answer's own link, and the messages.
_FEATURES_SCHEMA = pa.schema(
    [
        *map(CLEANED_SCHEMA.field, ("question_id", "answer_id", "question_score", "answer_score", "tags", "link")),
        ("answer_link", pa.string()),
        *map(CLEANED_SCHEMA.field, ("license", "answer_license")),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
    ]
)


def _to_hf(rows: list[dict]):
    import datasets

    # An explicit schema gives empty splits (possible in tiny demos) the same features.
    return datasets.Dataset(pa.Table.from_pylist(rows, schema=_FEATURES_SCHEMA))


def load_split(dataset_dir: Path, split: str):
    """Load one split (``train``, ``validation``, ``test`` or ``top_10k``) as a ``datasets.Dataset``."""
    import datasets

    hf = Path(dataset_dir) / "hf"
    if not hf.is_dir():
        raise FileNotFoundError(f"no chat dataset at {dataset_dir}: materialise chat_dataset first")
    dd = datasets.load_from_disk(str(hf))
    if split not in dd:
        raise KeyError(f"chat dataset at {dataset_dir} has no split {split!r}; it has {sorted(dd)}")
    return dd[split]
