"""Content similarity (pure): items alike by their categories, genres or tags.

An item is described by a set of tags (its category, its genres, free tags). Two
items are as similar as the Jaccard index of their tag sets; with one tag per item
that is simply "same category". :class:`ContentIndex` holds the tag sets as a
boolean incidence matrix, so the similarity of a few anchor items to the whole
catalog is one matrix product.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ContentIndex", "jaccard", "jaccard_rows"]


def jaccard(a: Iterable[str], b: Iterable[str]) -> float:
    sa, sb = set(a), set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else 0.0


def jaccard_rows(
    matrix: np.ndarray,
    rows: Sequence[int],
    columns: np.ndarray | None = None,
    sizes: np.ndarray | None = None,
) -> np.ndarray:
    """Jaccard similarity of ``matrix[rows]`` to every row of a 0/1 incidence matrix.

    ``columns`` (``matrix.T`` in C order) and ``sizes`` (row sums) may be precomputed:
    with them the cost is one ``[len(rows), tags] @ [tags, n]`` product.
    """
    if not len(rows) or matrix.size == 0:
        return np.zeros((len(rows), matrix.shape[0]), dtype=np.float32)
    if columns is None:
        columns = np.ascontiguousarray(matrix.T)
    if sizes is None:
        sizes = matrix.sum(axis=1)
    picked = list(rows)
    inter = matrix[picked] @ columns
    union = sizes[picked][:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass(frozen=True, eq=False)
class ContentIndex:
    """Tag sets of ``item_ids`` as an incidence matrix ``[n_items, n_tags]``."""

    item_ids: tuple[str, ...]
    tags: tuple[str, ...]
    matrix: np.ndarray  # float32 [n_items, n_tags], 1 where the item has the tag
    index_of: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "index_of", {item: i for i, item in enumerate(self.item_ids)})

    @classmethod
    def build(
        cls, item_tags: Mapping[str, Iterable[str]], order: Sequence[str] | None = None
    ) -> ContentIndex:
        """From ``item -> tags``; rows follow ``order`` (e.g. a catalog's item ids)."""
        ids = tuple(order) if order is not None else tuple(sorted(item_tags))
        tag_sets = [{t for t in item_tags.get(i, ()) if t} for i in ids]
        tags = tuple(sorted(set().union(*tag_sets))) if tag_sets else ()
        col = {t: c for c, t in enumerate(tags)}
        matrix = np.zeros((len(ids), len(tags)), dtype=np.float32)
        for row, tag_set in enumerate(tag_sets):
            for t in tag_set:
                matrix[row, col[t]] = 1.0
        return cls(item_ids=ids, tags=tags, matrix=matrix)

    def similarity_rows(self, rows: Sequence[int]) -> np.ndarray:
        """Jaccard similarity of each row in ``rows`` to every item: ``[len(rows), n]``."""
        return jaccard_rows(self.matrix, rows)

    def similar(self, item: str, n: int = 10) -> list[tuple[str, float]]:
        """The ``n`` most similar other items (ties by id), with their similarity."""
        row = self.index_of.get(item)
        if row is None:
            return []
        sims = self.similarity_rows([row])[0]
        sims[row] = 0.0
        order = sorted(
            np.flatnonzero(sims > 0).tolist(), key=lambda i: (-sims[i], self.item_ids[i])
        )
        return [(self.item_ids[i], float(sims[i])) for i in order[:n]]
