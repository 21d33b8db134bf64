"""``personalize catalog``: the item catalog from the command line.

    personalize catalog import FILE [--map FIELD=COLUMN,...] [--columns A,B,...]
                                    [--delimiter D] [--time-format F]
    personalize catalog similar ITEM [-k N] [--user U]

``import`` validates a CSV or JSON-lines file and produces its items to the catalog
topic (``traffic/catalog_import.py``; README "Item catalog"); the writer applies them
and serving's catalog has them within ``serving.catalog_refresh_s``. ``similar`` asks
the running server's ``Recommender.SimilarItems``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ops.local_key import default_api_key
from personalization.settings import Settings
from traffic.catalog_import import FIELDS, CatalogImport, import_catalog

__all__ = ["add_commands"]


def cmd_import(settings: Settings, args: argparse.Namespace) -> int:
    try:
        spec = CatalogImport.parse(
            args.map, columns=args.columns, delimiter=args.delimiter, time_format=args.time_format
        )
        stats = import_catalog(settings, args.file, spec)
    except ValueError as exc:  # a mapping or file that cannot be read as asked
        raise SystemExit(f"personalize catalog import: {exc}") from None
    print(
        f"sent {stats.sent} items to {settings.kafka.catalog_topic} "
        f"({stats.deletes} deletes); skipped {stats.bad_rows.summary()}"
    )
    if stats.errors:
        print(f"{stats.errors} records not acknowledged by Kafka", file=sys.stderr)
    return 0 if stats.errors == 0 else 1


def cmd_similar(settings: Settings, args: argparse.Namespace) -> int:
    import grpc

    from personalization.v1 import recommender_pb2, recommender_pb2_grpc

    target = f"{settings.serving.host}:{settings.serving.port}"
    key = default_api_key(settings)
    metadata = (("authorization", f"Bearer {key}"),) if key else None
    with grpc.insecure_channel(target) as channel:
        stub = recommender_pb2_grpc.RecommenderStub(channel)
        request = recommender_pb2.SimilarItemsRequest(
            item_id=args.item, k=args.k, user_id=args.user
        )
        try:
            response = stub.SimilarItems(
                request, timeout=settings.serving.client_deadline_s, metadata=metadata
            )
        except grpc.RpcError as exc:
            print(f"{exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    for rank, item in enumerate(response.items, 1):
        print(f"{rank:3}. {item.item_id:20} {item.score:8.4f}  {item.category:12} {item.reason}")
    return 0


def add_commands(sub: Any) -> None:
    """Register ``catalog`` on the ``personalize`` subparsers."""
    catalog = sub.add_parser("catalog", help="item catalog: import a file, similar items")
    actions = catalog.add_subparsers(dest="catalog_action", required=True)
    imp = actions.add_parser("import", help="a CSV or JSON-lines item file into the catalog topic")
    imp.add_argument("file")
    imp.add_argument(
        "--map",
        help=f"FIELD=COLUMN,... of {', '.join(FIELDS)} (unmapped fields: their own name)",
    )
    imp.add_argument("--columns", help="the CSV has no header; these are its column names")
    imp.add_argument("--delimiter", help=", ; | or \\t (default: sniffed)")
    imp.add_argument(
        "--time-format",
        help="strptime pattern of created_at / updated_at (default: epoch s, ms or ISO 8601)",
    )
    imp.set_defaults(func=cmd_import)
    similar = actions.add_parser("similar", help="Recommender.SimilarItems of the running server")
    similar.add_argument("item")
    similar.add_argument("-k", type=int, default=10)
    similar.add_argument("--user", default="", help="exclude what this user bought")
    similar.set_defaults(func=cmd_similar)
