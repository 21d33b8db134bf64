"""Candidate sources (pure): each scores the whole catalog for one user, 0..1.

Every source implements :class:`CandidateSource`: ``source.score(context) ->
SourceScores`` with a dense score per catalog position, normalised within the source
(so blend weights compare like with like), 0 meaning "not a candidate from this
source", and for the items it explains an anchor (the recent item or category behind
the score) that becomes the reason. :data:`CANDIDATE_SOURCES` registers them by name;
``tests/unit/test_serving_contracts.py`` runs one contract over every entry.

=============  ===========================================  ==============================
source         score                                        reason
=============  ===========================================  ==============================
cf             <user factors, item factors>, above the      people like you liked this
               user's mean score, divided by the best
covisitation   recency-weighted neighbour weights of the    viewed together with X
               user's recent items (each list / its best)
interest       interest(category) x (1 + popularity in it)  because you like Y /
               / 2 (the blend_v1 term)                      popular in Y
trending       decayed trending / catalog maximum           trending now
content        recency-weighted Jaccard of tags (catalog:   similar to X
               path, brand, tags; or same category) with
               the user's recent items
session        neighbours of the user's newest item alone   picked around X
               (the item-to-item transition), / the best
=============  ===========================================  ==============================

Scores are only normalised over ``allowed`` items, so a user's purchases or just-seen
items cannot set the scale for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

import numpy as np

from personalization.content import jaccard_rows
from serving.catalog_snapshot import CatalogSnapshot
from serving.item_content import snapshot_content
from serving.online_features import UserFeatures

__all__ = [
    "BLEND_TERMS",
    "CANDIDATE_SOURCES",
    "CF",
    "CONTENT",
    "COVISITATION",
    "INTEREST",
    "PROPENSITY",
    "SESSION",
    "SOURCES",
    "TRENDING",
    "CandidateContext",
    "CandidateSource",
    "CfSource",
    "ContentSource",
    "CovisitationSource",
    "InterestSource",
    "SessionSource",
    "SourceScores",
    "TrendingSource",
    "interest_by_code",
    "reason_for",
    "score_sources",
]

CF = "cf"
COVISITATION = "covisitation"
INTEREST = "interest"
TRENDING = "trending"
CONTENT = "content"
SESSION = "session"
SOURCES = (CF, COVISITATION, INTEREST, TRENDING, CONTENT, SESSION)
# Not a source of its own: the learned click propensity over the sources' scores
# (serving/propensity.py), blended like one when a strategy gives it a weight.
PROPENSITY = "propensity"
BLEND_TERMS = (*SOURCES, PROPENSITY)

# Weight of global trending under a request context's own trending list.
CONTEXT_GLOBAL_SHARE = 0.01

# Items this popular within their category (relative to its best item) are explained
# as "popular in <category>" rather than "because you like <category>".
POPULAR_IN_CATEGORY = 0.5


@dataclass(frozen=True, slots=True)
class CandidateContext:
    """What every source may look at for one request."""

    user: UserFeatures | None
    catalog: CatalogSnapshot
    now_ms: int
    allowed: np.ndarray  # bool [n]: not excluded by the rules
    anchors: tuple[int, ...]  # catalog positions of the user's recent items, newest first
    recency_decay: float = 0.7
    # CF's scores are scaled by min(1, events / this) (RankingSettings.cf_confidence_events).
    cf_confidence_events: int = 0
    trending_half_life_s: float = 6 * 3600.0
    # The request context's own trending (0..1 over the catalog) and its reason, where
    # it has enough data (serving/context_trending.py); None: global trending.
    context_trending: tuple[np.ndarray, str] | None = None


@dataclass(frozen=True, slots=True)
class SourceScores:
    source: str
    scores: np.ndarray  # float64 [n] in 0..1
    # catalog position -> the item id (co-visitation, content) or category behind it
    anchor: Callable[[int], str] = field(default=lambda i: "")

    def reason(self, i: int) -> str:
        return reason_for(self.source, self.anchor(i))


def reason_for(source: str, anchor: str) -> str:
    if source == CF:
        return "people like you liked this"
    if source == COVISITATION:
        return f"viewed together with {anchor}" if anchor else "viewed together"
    if source == CONTENT:
        return f"similar to {anchor}" if anchor else "similar to what you viewed"
    if source == INTEREST:
        return anchor or "recommended for you"  # the anchor is the full phrase
    if source == SESSION:
        return f"picked around {anchor}" if anchor else "picked around your last item"
    if source == PROPENSITY:
        return "you often pick items like this"
    if source == TRENDING:
        return anchor or "trending now"  # the anchor: "popular in DE", ...
    return "trending now"


class CandidateSource(Protocol):
    """The role of a candidate source: score every catalog position for one request.

    ``score`` returns float64 ``[len(ctx.catalog)]`` in 0..1, 0 for items outside
    ``ctx.allowed``; it reads the context and never writes it (nor the catalog's
    arrays), and gives the same scores for the same context. Sources are stateless, so
    they pickle.
    """

    @property
    def name(self) -> str: ...

    def score(self, ctx: CandidateContext) -> SourceScores: ...


def _max_normalised(values: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    values = np.where(allowed, values, 0.0)
    top = float(values.max()) if values.size else 0.0
    return values / top if top > 0 else np.zeros_like(values, dtype=np.float64)


def _empty(ctx: CandidateContext, source: str) -> SourceScores:
    return SourceScores(source, np.zeros(len(ctx.catalog), dtype=np.float64))


@dataclass(frozen=True, slots=True)
class CfSource:
    """Dot products of the user's factors with the catalog's item factors."""

    name: ClassVar[str] = CF

    def score(self, ctx: CandidateContext) -> SourceScores:
        catalog, user = ctx.catalog, ctx.user
        if user is None or not user.cf_vector or not catalog.has_factors:
            return _empty(ctx, CF)
        vector = np.asarray(user.cf_vector, dtype=np.float32)
        if vector.shape[0] != catalog.item_factors.shape[1]:
            return _empty(ctx, CF)  # a model with another width: ignore, do not fail
        raw = (catalog.item_factors @ vector).astype(np.float64)
        valid = catalog.factor_mask & ctx.allowed
        if not valid.any():
            return _empty(ctx, CF)
        # Only items above the user's mean predicted score are CF candidates: raw dot
        # products are not comparable across users, their spread within one user is.
        floor = float(raw[valid].mean())
        top = float(raw[valid].max())
        if top <= floor:
            return _empty(ctx, CF)
        scores = np.where(valid, np.clip((raw - floor) / (top - floor), 0.0, None), 0.0)
        if ctx.cf_confidence_events > user.events_total:
            # Factors learnt from a few events are mostly their random start.
            scores *= user.events_total / ctx.cf_confidence_events
        return SourceScores(CF, scores)


@dataclass(frozen=True, slots=True)
class CovisitationSource:
    """Neighbours of the user's recent items, newer anchors weighing more."""

    name: ClassVar[str] = COVISITATION

    def score(self, ctx: CandidateContext) -> SourceScores:
        catalog = ctx.catalog
        n = len(catalog)
        if not catalog.covisitation or not ctx.anchors:
            return _empty(ctx, COVISITATION)
        total = np.zeros(n, dtype=np.float64)
        best = np.zeros(n, dtype=np.float64)  # strongest single anchor contribution
        best_anchor = np.full(n, -1, dtype=np.int64)
        for position, anchor in enumerate(ctx.anchors):
            entry = catalog.covisitation.get(anchor)
            if entry is None:
                continue
            neighbours, weights = entry
            top = float(weights.max()) if weights.size else 0.0
            if top <= 0:
                continue
            contribution = weights * (ctx.recency_decay**position / top)
            np.add.at(total, neighbours, contribution)
            stronger = contribution > best[neighbours]
            best[neighbours[stronger]] = contribution[stronger]
            best_anchor[neighbours[stronger]] = anchor
        scores = _max_normalised(total, ctx.allowed)
        return SourceScores(
            COVISITATION,
            scores,
            anchor=lambda i: catalog.item_ids[best_anchor[i]] if best_anchor[i] >= 0 else "",
        )


def decayed_trending(ctx: CandidateContext) -> np.ndarray:
    """Trending scores up to one common factor (cached per snapshot): every use here
    normalises them, which divides the decay to ``now`` out again."""
    return ctx.catalog.trending_relative(ctx.trending_half_life_s)


@dataclass(frozen=True, slots=True)
class TrendingSource:
    """The catalog's decayed trending scores over their maximum."""

    name: ClassVar[str] = TRENDING

    def score(self, ctx: CandidateContext) -> SourceScores:
        overall = _max_normalised(decayed_trending(ctx), ctx.allowed)
        if ctx.context_trending is None:
            return SourceScores(TRENDING, overall)
        # The context's list leads; global trending only orders what it has not seen.
        local, reason = ctx.context_trending
        scores = _max_normalised(local + CONTEXT_GLOBAL_SHARE * overall, ctx.allowed)
        return SourceScores(TRENDING, scores, anchor=lambda i: reason if local[i] > 0 else "")


def interest_by_code(user: UserFeatures | None, catalog: CatalogSnapshot) -> np.ndarray:
    """The user's interest per category code, divided by their strongest (0..1)."""
    by_code = np.zeros(len(catalog.categories), dtype=np.float64)
    if user is None:
        return by_code
    for category, score in user.interests:
        code = catalog.code_of.get(category)
        if code is not None and score > 0 and math.isfinite(score):
            by_code[code] = max(by_code[code], score)
    top = float(by_code.max()) if by_code.size else 0.0
    return by_code / top if top > 0 else by_code


@dataclass(frozen=True, slots=True)
class InterestSource:
    """The user's interest in the item's category times its popularity there."""

    name: ClassVar[str] = INTEREST

    def score(self, ctx: CandidateContext) -> SourceScores:
        catalog = ctx.catalog
        interest = interest_by_code(ctx.user, catalog)
        if not interest.any():
            return _empty(ctx, INTEREST)
        popularity = catalog.category_popularity(ctx.trending_half_life_s)
        codes = catalog.category_codes
        raw = interest[codes] * (1.0 + popularity) / 2.0

        def anchor(i: int) -> str:
            category = catalog.categories[codes[i]]
            if not category:
                return ""
            if popularity[i] >= POPULAR_IN_CATEGORY:
                return f"popular in {category}"
            return f"because you like {category}"

        return SourceScores(INTEREST, np.where(ctx.allowed, raw, 0.0), anchor=anchor)


@dataclass(frozen=True, slots=True)
class ContentSource:
    """Items like the user's recent ones: Jaccard over tags, or the same category."""

    name: ClassVar[str] = CONTENT

    def score(self, ctx: CandidateContext) -> SourceScores:
        catalog = ctx.catalog
        n = len(catalog)
        if not ctx.anchors or n == 0:
            return _empty(ctx, CONTENT)
        rows = list(ctx.anchors)
        weights = np.array([ctx.recency_decay**p for p in range(len(rows))], dtype=np.float64)
        if catalog.tag_matrix.shape[0] == n and catalog.tag_matrix.size:
            sims = jaccard_rows(
                catalog.tag_matrix, rows, catalog.tag_columns, catalog.tag_sizes
            ).astype(np.float64)
            weighted = sims * weights[:, None]
            scores = _max_normalised(weights @ sims, ctx.allowed)

            def anchor(i: int) -> str:  # only asked for the few items picked: no [n] argmax
                return catalog.item_ids[rows[int(weighted[:, i].argmax())]]

        elif catalog.meta:
            # Catalog metadata: weighted Jaccard of category path, brand and tags
            # (serving/item_content.py), sparse, so only items sharing a feature cost.
            index = snapshot_content(catalog)
            scores = _max_normalised(index.similarity(rows, weights.tolist()), ctx.allowed)

            per_row: list[np.ndarray] = []  # each anchor's similarities, on first ask

            def anchor(i: int) -> str:  # the recent item contributing most to item i
                if not per_row:
                    per_row.extend(
                        w * index.similarity([r])
                        for r, w in zip(rows, weights.tolist(), strict=True)
                    )
                return catalog.item_ids[rows[max(range(len(rows)), key=lambda r: per_row[r][i])]]

        else:
            # Same category: a weight per category code, gathered per item (no anchors x n).
            codes = catalog.category_codes
            by_code = np.zeros(len(catalog.categories), dtype=np.float64)
            np.add.at(by_code, codes[rows], weights)
            scores = _max_normalised(by_code[codes], ctx.allowed)

            def anchor(i: int) -> str:  # the newest recent item of the same category
                return next(
                    (catalog.item_ids[r] for r in rows if codes[r] == codes[i]),
                    catalog.item_ids[rows[0]],
                )

        return SourceScores(CONTENT, scores, anchor=anchor)


@dataclass(frozen=True, slots=True)
class SessionSource:
    """The neighbours of the user's newest item only: the next step of the session.

    Co-visitation blends the last few items with a fixed recency decay; this source is
    that blend's first term alone, so a learned blend can weigh "what goes with the
    item just seen" against the longer history instead of taking the decay as given.
    """

    name: ClassVar[str] = SESSION

    def score(self, ctx: CandidateContext) -> SourceScores:
        catalog = ctx.catalog
        if not catalog.covisitation or not ctx.anchors:
            return _empty(ctx, SESSION)
        newest = ctx.anchors[0]
        entry = catalog.covisitation.get(newest)
        if entry is None:
            return _empty(ctx, SESSION)
        neighbours, weights = entry
        raw = np.zeros(len(catalog), dtype=np.float64)
        raw[neighbours] = weights
        anchor = catalog.item_ids[newest]
        return SourceScores(SESSION, _max_normalised(raw, ctx.allowed), anchor=lambda i: anchor)


# The registry, in :data:`SOURCES` order (the order blends sum and explain them in).
CANDIDATE_SOURCES: Mapping[str, CandidateSource] = {
    source.name: source
    for source in (
        CfSource(),
        CovisitationSource(),
        InterestSource(),
        TrendingSource(),
        ContentSource(),
        SessionSource(),
    )
}


def score_sources(ctx: CandidateContext, weights: Mapping[str, float]) -> list[SourceScores]:
    """The sources with a positive weight, in :data:`SOURCES` order."""
    out = []
    for name in SOURCES:
        if weights.get(name, 0.0) <= 0:
            continue
        out.append(CANDIDATE_SOURCES[name].score(ctx))
    return out
