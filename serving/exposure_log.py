"""One exposure record per Recommend answer, published for A/B attribution in the job.

The record (``personalization.exposures.Exposure``) names what was shown to whom under
which experiment variant, with the features each item was ranked with (the propensity
model's training data). It goes to ``kafka.exposures_topic`` keyed by the user, through
the event collector's producer.
"""

from __future__ import annotations

from personalization.exposures import Exposure
from serving.collector import EventCollector
from serving.recommender import Recommendation

__all__ = ["ExposureLog", "exposure_record"]


def exposure_record(rec: Recommendation, user_id: str, now_ms: int) -> Exposure:
    return Exposure(
        rec_id=rec.recommendation_id,
        user_id=user_id,
        experiment=rec.experiment,
        variant=rec.variant,
        strategy=rec.strategy,
        items=tuple(item.item_id for item in rec.items),
        time_ms=now_ms,
        categories=tuple(item.category for item in rec.items),
        features=rec.logged_features,
    )


class ExposureLog:
    """Publishes exposures; ``publish`` is the recommender's ``on_exposure`` callback."""

    def __init__(self, collector: EventCollector, topic: str) -> None:
        self._collector = collector
        self._topic = topic

    def publish(self, rec: Recommendation, user_id: str, now_ms: int) -> None:
        exposure = exposure_record(rec, user_id, now_ms)
        self._collector.publish(self._topic, user_id, exposure.to_json())
