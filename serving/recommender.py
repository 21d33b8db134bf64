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

from personalization.experiments import Assignment, Experiment, assignment_for, load_experiments
from personalization.segments import strategy_for, user_segments
from personalization.settings import Settings
from serving.catalog import ItemCatalog
from serving.cold_start import ColdStartParams, merge_new_items, new_items_for
from serving.context_trending import ContextQuery
from serving.online_features import StoreUnavailable, UserFeatureReader, UserFeatures
from serving.propensity import ModelWatcher
from serving.ranking import OPTED_OUT, STORE_UNAVAILABLE, RankedItem, RankingParams, rank
from serving.similar import SimilarParams, similar_items

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recommendation:
    items: list[RankedItem]
    strategy: str
    personalized: bool
    fallback_reason: str
    recommendation_id: str
    features_age_ms: int  # -1 when no features were used
    experiment: str = ""
    variant: str = ""
    # Per item, the features it was ranked with (see serving/propensity.py).
    logged_features: tuple[dict[str, float], ...] = ()


class Recommender:
    def __init__(
        self,
        settings: Settings,
        reader: UserFeatureReader,
        catalog: ItemCatalog,
        *,
        clock_ms: Callable[[], int] | None = None,
        on_store_state: Callable[[bool], None] | None = None,
        experiments: list[Experiment] | None = None,
        on_exposure: Callable[[Recommendation, str, int], None] | None = None,
        models: ModelWatcher | None = None,
    ) -> None:
        self._reader = reader
        self._catalog = catalog
        self._settings = settings
        self._params = RankingParams.from_settings(settings)
        if experiments is None and settings.serving.experiments_file:
            experiments = load_experiments(settings.serving.experiments_file)
        self._experiments = experiments or []
        # Every strategy an experiment names must exist: fail at start, not per request.
        self._strategy_params = {
            v.strategy: RankingParams.from_settings(settings, v.strategy)
            for e in self._experiments
            for v in e.variants
        }
        # Ranking by segment (segments.strategies), checked at start like the above.
        for strategy in settings.segments.strategies.values():
            self._strategy_params[strategy] = RankingParams.from_settings(settings, strategy)
        self._on_exposure = on_exposure
        self._now_ms = clock_ms or (lambda: int(time.time() * 1000))
        self._on_store_state = on_store_state
        self._models = models
        self._cold_start = ColdStartParams.from_settings(settings)
        self._similar = SimilarParams.from_settings(settings)

    @property
    def reader(self) -> UserFeatureReader:
        return self._reader

    @property
    def catalog(self) -> ItemCatalog:
        return self._catalog

    @property
    def models(self) -> ModelWatcher | None:
        return self._models

    def user_features(self, user_id: str) -> UserFeatures | None:
        """The user's features; raises StoreUnavailable (profile reads have no fallback)."""
        return self._reader.read(user_id, self._now_ms())

    def recommend(
        self, user_id: str, k: int, exclude: Iterable[str] = (), country: str = "", device: str = ""
    ) -> Recommendation:
        """``country`` / ``device``: the request's context; its own trending list replaces
        the global one where the job has seen enough of it (serving/context_trending.py)."""
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
        if user is not None and not user.may_personalize and not forced:
            forced = OPTED_OUT
        recommendation_id = uuid.uuid4().hex
        # Targeting and per-segment ranking see the segments of the row just read.
        segments = user_segments(user.segments, user.cluster_id) if user is not None else ()
        assignment = assignment_for(self._experiments, user_id, now_ms, segments)
        by_segment = strategy_for(self._settings.segments.strategies, segments)
        if assignment:
            params = self._strategy_params[assignment.strategy]
        elif by_segment:
            params = self._strategy_params[by_segment]
        else:
            params = self._params
        snapshot = self._catalog.snapshot
        exclude = tuple(exclude)  # read twice: ranking and the new items
        ranking = rank(
            user,
            snapshot,
            k,
            now_ms,
            exclude=exclude,
            params=params,
            fallback_reason=forced,
            # Exploration picks are reproducible from the recommendation id.
            seed=int(recommendation_id[:8], 16),
            # Read once: a swap by the model watcher lands between requests.
            propensity=self._models.current if self._models is not None else None,
            context=ContextQuery.of(country, device, self._settings.features.context),
        )
        items, logged = ranking.items, tuple(ranking.logged_features)
        if ranking.personalized:
            # New items no event has reached yet take the last places of a personal list
            # by content (serving/cold_start.py): no strategy could rank them otherwise.
            new = new_items_for(user, snapshot, now_ms, self._cold_start, exclude=exclude)
            items, logged = merge_new_items(items, logged, new, k)
        recommendation = Recommendation(
            items=items,
            strategy=ranking.strategy,
            personalized=ranking.personalized,
            fallback_reason=ranking.fallback_reason,
            recommendation_id=recommendation_id,
            features_age_ms=user.features_age_ms if user is not None else -1,
            experiment=assignment.experiment if assignment else "",
            variant=assignment.variant if assignment else "",
            logged_features=logged,
        )
        if self._on_exposure is not None and recommendation.items:
            self._on_exposure(recommendation, user_id, now_ms)
        return recommendation

    def similar(
        self,
        item_id: str,
        k: int,
        user_id: str = "",
        exclude: Iterable[str] = (),
        country: str = "",
        device: str = "",
    ) -> list[RankedItem]:
        """Items like ``item_id`` (serving/similar.py); with a user, not what they bought.
        Raises ``serving.similar.UnknownItem`` for an item the catalog does not hold.

        The user's row is one HMGET, as for Recommend; with Redis down the list is still
        served, without the purchase exclusion (logged)."""
        banned = list(exclude)
        if user_id:
            try:
                user = self._reader.read(user_id, self._now_ms())
            except StoreUnavailable as exc:
                log.warning("similar items for %s: %s; purchases not excluded", user_id, exc)
                self._report_store(False)
            else:
                self._report_store(True)
                if user is not None:
                    banned.extend(user.purchased_items)
        return similar_items(
            self._catalog.snapshot,
            item_id,
            k,
            self._similar,
            exclude=banned,
            context=ContextQuery.of(country, device, self._settings.features.context),
        )

    def assignment(self, user_id: str) -> Assignment | None:
        return assignment_for(self._experiments, user_id, self._now_ms())

    def _report_store(self, ok: bool) -> None:
        if self._on_store_state is not None:
            self._on_store_state(ok)
