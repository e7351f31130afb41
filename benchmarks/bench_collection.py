"""Collect 10,000 questions from the sample site through the real client; report requests per 1,000 pairs
and pairs per second. Goal: at most 11 requests per 1,000 pairs.

    .venv/bin/python benchmarks/bench_collection.py [--questions 10000] [--rps 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

from cv_pipeline.collection import collect_batch
from cv_pipeline.partitions import PARTITION_SIZE, RankRange
from cv_pipeline.sources.api import StackExchangeAPISource
from cv_pipeline.sources.sample_site import SampleSite


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--questions", type=int, default=10_000)
    parser.add_argument("--rps", type=float, default=10.0, help="client request ceiling (the default one)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "collection.json")
    args = parser.parse_args()

    pairs = requests = 0
    started = time.perf_counter()
    with SampleSite(n_questions=args.questions, seed=0) as site, tempfile.TemporaryDirectory() as tmp:
        with StackExchangeAPISource(base_url=site.base_url, requests_per_second=args.rps) as source:
            for start in range(0, args.questions, PARTITION_SIZE):
                rr = RankRange(start, min(start + PARTITION_SIZE, args.questions))
                batch = collect_batch(source, rr, Path(tmp) / f"{rr.key}.json", Path(tmp) / f"ck-{rr.key}")
                pairs += batch.answer_count
            requests = source.requests
        server_requests = site.requests
    elapsed = time.perf_counter() - started
    result = {
        "questions": args.questions,
        "pairs_with_answer": pairs,
        "requests": requests,
        "server_requests": server_requests,
        "requests_per_1000_pairs": round(1000 * requests / pairs, 2),
        "requests_per_1000_questions": round(1000 * requests / args.questions, 2),
        "pairs_per_s": round(pairs / elapsed, 1),
        "elapsed_s": round(elapsed, 2),
        "client_rps_ceiling": args.rps,
        "goal_requests_per_1000_pairs": 11,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
