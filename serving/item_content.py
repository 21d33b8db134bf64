"""Content similarity of catalogued items (pure): category path, brand and tags.

Each item is a set of weighted content features: every level of its category path
(``c:shoes``, ``c:running``), its brand (``b:acme``) and its free tags (``t:trail``);
an item without a catalog record has its event category as its only feature, so two
such items are as similar as "same category" made them before. Two items are as
similar as the weighted Jaccard index of their feature sets::

    sim(a, b) = sum of the weights of shared features / sum over the union

The index is sparse (feature postings, CSR/CSC arrays): the similarity of one item to
the whole catalog touches only the items that share a feature with it, so a catalog of
many categories and tags needs no dense ``items x tags`` matrix. It is built once per
catalog snapshot (``CatalogSnapshot.derived``), in the refresh thread.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from personalization.catalog_records import CatalogItem
from serving.catalog_snapshot import CatalogSnapshot

__all__ = [
    "CONTENT_INDEX",
    "ContentWeights",
    "ItemContent",
    "content_features",
    "item_content",
    "snapshot_content",
]

# The name the index is cached under on a snapshot.
CONTENT_INDEX = "item_content"

CATEGORY = "c:"
BRAND = "b:"
TAG = "t:"


@dataclass(frozen=True, slots=True)
class ContentWeights:
    category: float = 1.0
    brand: float = 1.0
    tag: float = 0.5

    def of(self, feature: str) -> float:
        if feature.startswith(BRAND):
            return self.brand
        if feature.startswith(TAG):
            return self.tag
        return self.category


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def content_features(category: str, meta: CatalogItem | None) -> list[str]:
    """An item's content features (lower-cased, so "Shoes" and "shoes" match)."""
    if meta is None:
        return [CATEGORY + _norm(category)] if category else []
    levels = meta.category_path or ((category,) if category else ())
    out = [CATEGORY + _norm(level) for level in levels]
    if meta.brand:
        out.append(BRAND + _norm(meta.brand))
    out.extend(TAG + _norm(tag) for tag in meta.tags)
    return list(dict.fromkeys(out))


@dataclass(frozen=True, eq=False)
class ItemContent:
    """Weighted feature sets of a snapshot's items, by position."""

    features: tuple[str, ...]  # feature id -> name
    weights: np.ndarray  # float64 [F]
    item_ptr: np.ndarray  # int64 [n + 1]: item i has item_feat[item_ptr[i]:item_ptr[i+1]]
    item_feat: np.ndarray  # int64 [nnz]
    feat_ptr: np.ndarray  # int64 [F + 1]: feature f is held by feat_items[feat_ptr[f]:...]
    feat_items: np.ndarray  # int64 [nnz]
    item_weight: np.ndarray  # float64 [n]: total weight of each item's features

    def features_of(self, i: int) -> list[str]:
        return [self.features[f] for f in self.item_feat[self.item_ptr[i] : self.item_ptr[i + 1]]]

    def similarity(
        self, rows: Iterable[int], row_weights: Iterable[float] | None = None
    ) -> np.ndarray:
        """``sum_r weight_r * sim(r, every item)``: float64 [n]; one row's is its Jaccard."""
        n = self.item_weight.shape[0]
        total = np.zeros(n, dtype=np.float64)
        weights = list(row_weights) if row_weights is not None else None
        for k, i in enumerate(rows):
            feats = self.item_feat[self.item_ptr[i] : self.item_ptr[i + 1]]
            if not feats.size:
                continue
            inter = np.zeros(n, dtype=np.float64)
            for f in feats.tolist():
                inter[self.feat_items[self.feat_ptr[f] : self.feat_ptr[f + 1]]] += self.weights[f]
            touched = np.flatnonzero(inter)
            union = self.item_weight[i] + self.item_weight[touched] - inter[touched]
            sims = np.divide(
                inter[touched], union, out=np.zeros(touched.size, dtype=np.float64), where=union > 0
            )
            total[touched] += sims * (weights[k] if weights is not None else 1.0)
        return total

    def shares_brand(self, a: int, b: int) -> bool:
        brands = {f for f in self.features_of(a) if f.startswith(BRAND)}
        return bool(brands) and bool(brands.intersection(self.features_of(b)))


def build_item_content(
    item_features: list[list[str]], weights: ContentWeights = ContentWeights()
) -> ItemContent:
    """The index of items given by position, each with its feature names."""
    feature_id: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    for i, feats in enumerate(item_features):
        for name in feats:
            rows.append(i)
            cols.append(feature_id.setdefault(name, len(feature_id)))
    n, nf = len(item_features), len(feature_id)
    features = tuple(feature_id)
    w = np.array([weights.of(name) for name in features], dtype=np.float64)
    r = np.array(rows, dtype=np.int64)
    c = np.array(cols, dtype=np.int64)
    # Items' feature lists (CSR): rows are already in item order.
    item_ptr = np.searchsorted(r, np.arange(n + 1), side="left").astype(np.int64)
    # Features' item lists (CSC): the same pairs ordered by feature.
    order = np.argsort(c, kind="stable")
    feat_items = r[order]
    feat_ptr = np.searchsorted(c[order], np.arange(nf + 1), side="left").astype(np.int64)
    item_weight = np.zeros(n, dtype=np.float64)
    if c.size:
        np.add.at(item_weight, r, w[c])
    return ItemContent(features, w, item_ptr, c, feat_ptr, feat_items, item_weight)


def item_content(
    catalog: CatalogSnapshot, weights: ContentWeights = ContentWeights()
) -> ItemContent:
    """The snapshot's index, built once per snapshot and kept on it."""

    def build(snapshot: CatalogSnapshot) -> ItemContent:
        codes, categories, meta = snapshot.category_codes, snapshot.categories, snapshot.meta
        return build_item_content(
            [
                content_features(categories[codes[i]], meta.get(item_id))
                for i, item_id in enumerate(snapshot.item_ids)
            ],
            weights,
        )

    index = catalog.derived(f"{CONTENT_INDEX}:{weights}", build)
    assert isinstance(index, ItemContent)
    return index


def snapshot_content(catalog: CatalogSnapshot) -> ItemContent:
    """The index the refresh built for this snapshot (with the configured weights), or
    one with the default weights for a snapshot built elsewhere (tests, replays)."""
    for name, value in catalog._objects.items():
        if name.startswith(CONTENT_INDEX) and isinstance(value, ItemContent):
            return value
    return item_content(catalog)
