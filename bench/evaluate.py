"""Replay MovieLens 100K test-then-train and print HitRate@10 / NDCG@10 per method.

    python -m bench.evaluate                 # the full 100,000 ratings
    python -m bench.evaluate --limit 20000   # a quick run
    python -m bench.evaluate --json out.json

Methods, all through :func:`serving.ranking.rank`: online popularity, CF alone,
co-visitation alone, and the hybrid strategy configured in ``RankingSettings``
(``hybrid_v1`` unless ``--strategy`` names another). See
:mod:`analysis.evaluation` for the protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from analysis.evaluation import evaluate, load_events, movielens_item_tags
from flink_jobs.covisitation import CoVisitConfig
from flink_jobs.learning import LearnerConfig
from personalization.settings import Settings, load_settings
from serving import candidates as cand
from serving.ranking import HYBRID_V1, RankingParams
from traffic.replay import MOVIELENS_100K_DATA, dataset_path


def methods(
    settings: Settings, strategy: str, category_cap_share: float
) -> dict[str, RankingParams]:
    base = dataclasses.replace(
        RankingParams.from_settings(
            settings.model_copy(
                update={"ranking": settings.ranking.model_copy(update={"strategy": strategy})}
            )
        ),
        exploration_share=0.0,
    )
    alone = dataclasses.replace(base, category_cap_share=1.0, exclude_recent=0)
    return {
        "popularity": dataclasses.replace(alone, weights=((cand.TRENDING, 1.0),)),
        "cf": dataclasses.replace(alone, weights=((cand.CF, 1.0),)),
        "covisitation": dataclasses.replace(alone, weights=((cand.COVISITATION, 1.0),)),
        strategy: dataclasses.replace(base, category_cap_share=category_cap_share),
    }


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__)
    parser.add_argument("--data", default=str(dataset_path(MOVIELENS_100K_DATA, settings)))
    parser.add_argument("--limit", type=int, default=None, help="first N events only")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--strategy", default=HYBRID_V1)
    parser.add_argument(
        "--category-cap-share",
        type=float,
        default=settings.ranking.category_cap_share,
        help="diversity cap of the hybrid (1.0 = off)",
    )
    parser.add_argument(
        "--popularity-half-life-days",
        type=float,
        default=math.inf,
        help="decay of the online popularity (default: none, i.e. counts)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    t0 = time.perf_counter()
    events = load_events(args.data, args.limit)
    load_s = time.perf_counter() - t0
    tags = movielens_item_tags(Path(args.data).parent)
    learner = LearnerConfig.from_settings(settings.learning)
    covisit = CoVisitConfig.from_settings(settings.learning)
    result = evaluate(
        events,
        methods(settings, args.strategy, args.category_cap_share),
        k=args.k,
        learner=learner,
        covisit=covisit,
        features=settings.features,
        popularity_half_life_s=args.popularity_half_life_days * 86400.0,
        item_tags=tags,
    )
    print(f"MovieLens replay: {result.events} events, {args.data}")
    print(result.table())
    print(
        f"run time {result.seconds:.1f} s (+ {load_s:.1f} s loading); "
        f"{result.cf_updates} CF updates ({learner.negatives} negatives each); the job's "
        "steps (profile, popularity, co-visitation, both CF halves, the feed) "
        f"{1e6 * result.steps_seconds / max(1, len(events)):,.0f} µs/event"
    )
    if args.json:
        payload = {
            "events": result.events,
            "k": result.k,
            "methods": {
                m.name: {"hit_rate": m.hit_rate, "ndcg": m.ndcg, "rank_us": m.rank_us}
                for m in result.methods.values()
            },
            "seconds": result.seconds,
            "steps_us_per_event": 1e6 * result.steps_seconds / max(1, len(events)),
            "learner": dataclasses.asdict(learner),
            "covisitation": dataclasses.asdict(covisit),
            "weights": dict(
                methods(settings, args.strategy, args.category_cap_share)[args.strategy].weights
            ),
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
