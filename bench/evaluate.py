"""Replay a log test-then-train and print HitRate@10 / NDCG@10 / coverage per method.

    python -m bench.evaluate                 # MovieLens 100K, all 100,000 ratings
    python -m bench.evaluate --data ../shared/datasets/movielens-latest-small/ratings.csv.gz
    python -m bench.evaluate --data $TAOBAO --limit 40000   # (the UserBehavior sample)
    python -m bench.evaluate --limit 20000   # a quick run
    python -m bench.evaluate --data shop.csv --map user_id=uid,item_id=sku,... # any CSV
    python -m bench.evaluate --session-gap-s 1800   # next item within a session only
    python -m bench.evaluate --json out.json

Methods, all through :func:`serving.ranking.rank`: every candidate source alone
(popularity = trending, cf, covisitation, content, interest, session), ``blend_v1``,
the hand-weighted hybrid configured in ``RankingSettings`` (``hybrid_v1`` unless
``--strategy`` names another) and the learned blend ``learned_v1`` (its head trained
test-then-train, :mod:`analysis.blend_learner`). ``--methods`` picks some. Every format
``traffic.replay`` reads is accepted (detected), and any CSV through ``--map`` as
``personalize send`` takes it. See :mod:`analysis.evaluation` for the protocol.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

from analysis.evaluation import evaluate, load_events, movielens_item_tags, source_shares
from flink_jobs.covisitation import CoVisitConfig
from flink_jobs.learning import LearnerConfig
from personalization.settings import Settings, load_settings
from serving import candidates as cand
from serving.ranking import HYBRID_V1, LEARNED, STRATEGY, RankingParams
from traffic.replay import MOVIELENS_100K_DATA, CsvMapping, EventReader, MappedCsvReader
from traffic.replay import dataset_path as _dataset_path

# Each candidate source alone, by the name the table gives it.
SINGLE_SOURCES = {
    "popularity": cand.TRENDING,
    "cf": cand.CF,
    "covisitation": cand.COVISITATION,
    "content": cand.CONTENT,
    "interest": cand.INTEREST,
    "session": cand.SESSION,
}


def methods(
    settings: Settings, strategy: str, category_cap_share: float
) -> dict[str, RankingParams]:
    def params(name: str) -> RankingParams:
        ranking = settings.ranking.model_copy(update={"strategy": name})
        return dataclasses.replace(
            RankingParams.from_settings(settings.model_copy(update={"ranking": ranking})),
            exploration_share=0.0,
            # A fixed blend ranks the same without the logged features: skip them here.
            log_features=False,
        )

    base = params(strategy)
    alone = dataclasses.replace(base, category_cap_share=1.0, exclude_recent=0)
    out = {
        name: dataclasses.replace(alone, weights=((source, 1.0),))
        for name, source in SINGLE_SOURCES.items()
    }
    out[STRATEGY] = params(STRATEGY)
    out[strategy] = dataclasses.replace(base, category_cap_share=category_cap_share)
    out[LEARNED] = dataclasses.replace(
        params(LEARNED), category_cap_share=category_cap_share, log_features=True
    )
    return out


def _reader(args: argparse.Namespace) -> EventReader | None:
    extra = (args.event_types, args.time_format, args.columns, args.delimiter)
    if not args.map:
        if any(extra):
            raise SystemExit("--event-types, --time-format, --columns and --delimiter need --map")
        return None
    try:
        mapping = CsvMapping.parse(
            args.map,
            event_types=args.event_types or "",
            time_format=args.time_format or "auto",
            columns=args.columns or "",
            delimiter=args.delimiter or "",
        )
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    return MappedCsvReader(mapping)


def main(argv: list[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__)
    parser.add_argument("--data", default=str(_dataset_path(MOVIELENS_100K_DATA, settings)))
    parser.add_argument("--limit", type=int, default=None, help="first N events only")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--strategy", default=HYBRID_V1)
    parser.add_argument("--methods", default="", help="comma-separated subset of the methods")
    parser.add_argument(
        "--category-cap-share",
        type=float,
        default=settings.ranking.category_cap_share,
        help="diversity cap of the hybrid and learned blends (1.0 = off)",
    )
    parser.add_argument(
        "--popularity-half-life-days",
        type=float,
        default=math.inf,
        help="decay of the online popularity (default: none, i.e. counts)",
    )
    parser.add_argument(
        "--session-gap-s",
        type=float,
        default=0.0,
        help="test only events within this gap of the user's previous interaction",
    )
    parser.add_argument("--map", help="read any CSV: FIELD=COLUMN,... (as personalize send)")
    parser.add_argument("--event-types", help="with --map: VALUE=TYPE,...")
    parser.add_argument("--time-format", help="with --map: auto, s, ms, iso or a strptime pattern")
    parser.add_argument("--columns", help="with --map: column names of a headerless file")
    parser.add_argument("--delimiter", help="with --map: , ; | or \\t (default: sniffed)")
    parser.add_argument("--json", type=Path, default=None, help="also write results here")
    args = parser.parse_args(argv)

    all_methods = methods(settings, args.strategy, args.category_cap_share)
    chosen = [m.strip() for m in args.methods.split(",") if m.strip()] or list(all_methods)
    unknown = sorted(set(chosen) - set(all_methods))
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; known: {sorted(all_methods)}")
    picked = {name: all_methods[name] for name in chosen}

    t0 = time.perf_counter()
    events = load_events(args.data, args.limit, _reader(args))
    load_s = time.perf_counter() - t0
    tags = movielens_item_tags(Path(args.data).parent)
    learner = LearnerConfig.from_settings(settings.learning)
    covisit = CoVisitConfig.from_settings(settings.learning)
    result = evaluate(
        events,
        picked,
        k=args.k,
        learner=learner,
        covisit=covisit,
        features=settings.features,
        popularity_half_life_s=args.popularity_half_life_days * 86400.0,
        item_tags=tags,
        head=settings.learning,
        session_gap_s=args.session_gap_s,
    )
    protocol = (
        f"next item within {args.session_gap_s:.0f} s of the user's previous one"
        if args.session_gap_s > 0
        else "every interaction"
    )
    print(
        f"replay of {args.data}: {len(events)} events, {result.events} tested ({protocol}), "
        f"{result.catalog_items} items"
    )
    print(result.table())
    print(
        f"run time {result.seconds:.1f} s (+ {load_s:.1f} s loading); "
        f"{result.cf_updates} CF updates ({learner.negatives} negatives each); the job's "
        "steps (profile, popularity, co-visitation, both CF halves, the feed) "
        f"{1e6 * result.steps_seconds / max(1, len(events)):,.0f} µs/event"
    )
    if args.json:
        payload = {
            "data": args.data,
            "events": result.events,
            "k": result.k,
            "session_gap_s": args.session_gap_s,
            "catalog_items": result.catalog_items,
            "methods": {
                m.name: {
                    "hit_rate": m.hit_rate,
                    "ndcg": m.ndcg,
                    "coverage": result.coverage(m.name),
                    "source_shares": source_shares(m.sources),
                    "rank_us": m.rank_us,
                }
                for m in result.methods.values()
            },
            "seconds": result.seconds,
            "steps_us_per_event": 1e6 * result.steps_seconds / max(1, len(events)),
            "learner": dataclasses.asdict(learner),
            "covisitation": dataclasses.asdict(covisit),
            "weights": {name: dict(p.weights) for name, p in picked.items()},
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
