"""Recommendations for one user: online features + in-process catalog + ranking.

The request path costs one Redis round trip (the user's row); everything item-side is
already in process. When Redis is unreachable the answer is the trending list from the
catalog, flagged ``store_unavailable``: a recommendation call never fails because the
online store did.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from personalization.settings import Settings
from serving.catalog import ItemCatalog
from serving.online_features import StoreUnavailable, UserFeatureReader, UserFeatures
from serving.ranking import STORE_UNAVAILABLE, RankedItem, RankingParams, rank

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recommendation:
    items: list[RankedItem]
    strategy: str
    personalized: bool
    fallback_reason: str
    recommendation_id: str
    features_age_ms: int  # -1 when no features were used


class Recommender:
    def __init__(
        self,
        settings: Settings,
        reader: UserFeatureReader,
        catalog: ItemCatalog,
        *,
        clock_ms: Callable[[], int] | None = None,
        on_store_state: Callable[[bool], None] | None = None,
    ) -> None:
        self._reader = reader
        self._catalog = catalog
        self._params = RankingParams.from_settings(settings)
        self._now_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._on_store_state = on_store_state

    @property
    def reader(self) -> UserFeatureReader:
        return self._reader

    @property
    def catalog(self) -> ItemCatalog:
        return self._catalog

    def user_features(self, user_id: str) -> UserFeatures | None:
        """The user's features; raises StoreUnavailable (profile reads have no fallback)."""
        return self._reader.read(user_id, self._now_ms())

    def recommend(self, user_id: str, k: int, exclude: Iterable[str] = ()) -> Recommendation:
        now_ms = self._now_ms()
        forced = ""
        user: UserFeatures | None = None
        try:
            user = self._reader.read(user_id, now_ms)
        except StoreUnavailable as exc:
            log.warning("recommend %s: %s; serving trending", user_id, exc)
            forced = STORE_UNAVAILABLE
            self._report_store(False)
        else:
            self._report_store(True)
        recommendation_id = uuid.uuid4().hex
        ranking = rank(
            user,
            self._catalog.snapshot,
            k,
            now_ms,
            exclude=exclude,
            params=self._params,
            fallback_reason=forced,
            # Exploration picks are reproducible from the recommendation id.
            seed=int(recommendation_id[:8], 16),
        )
        return Recommendation(
            items=ranking.items,
            strategy=ranking.strategy,
            personalized=ranking.personalized,
            fallback_reason=ranking.fallback_reason,
            recommendation_id=recommendation_id,
            features_age_ms=user.features_age_ms if user is not None else -1,
        )

    def _report_store(self, ok: bool) -> None:
        if self._on_store_state is not None:
            self._on_store_state(ok)
