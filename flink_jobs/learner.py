"""The learner role: one interface for the job's online models, and their registry.

The verbs are River's (``river/reco/base.py``): ``learn_one`` one interaction,
``predict_one`` a score for a (user, item) pair, ``rank`` a list of items for a user,
best first. Two additions the job needs: ``t``, the interaction's event time in ms
(co-visitation decays with it; a learner must never read the wall clock), and ``x``,
features of the interaction (the propensity model learns from the features serving
logged, and ``rank`` takes them per item). A learner ignores what it has no use for.

What every learner promises (``tests/unit/test_job_contracts.py`` checks each one in
:data:`LEARNERS`): ``learn_one`` does not change its inputs; an unknown user or item
gets a defined score (no exception) and ``rank`` of no items is ``[]``; ``rank`` orders
by ``predict_one`` and keeps the given order among ties; a learner pickles and goes on
learning identically after unpickling; the same settings (seed) and stream give the
same predictions.

Implementations do not import this module (the protocol is structural), so the registry
here can import them without a cycle; mypy checks each entry against :class:`Learner`.

Examples
--------
>>> learner = LEARNERS["covisitation"](LearningSettings())
>>> for t, item in enumerate(["tent", "stove", "tent", "lamp"]):
...     learner.learn_one("u", item, 1.0, t)
>>> learner.rank("u", ["novel", "stove", "tent"])
['tent', 'stove', 'novel']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from flink_jobs.covisitation import CoVisitation
from flink_jobs.learning import OnlineMF
from flink_jobs.propensity import Trainer
from personalization.settings import LearningSettings

__all__ = ["LEARNERS", "Features", "Learner"]

Features = Mapping[str, float]


@runtime_checkable
class Learner(Protocol):
    # Positional-only: implementations keep their own argument names (``weight`` for
    # the factorisation's positive weight, ``y`` for the propensity's click label).
    def learn_one(
        self, user: str, item: str, y: float, t: int = ..., x: Features | None = ..., /
    ) -> None: ...

    def predict_one(self, user: str, item: str, x: Features | None = ..., /) -> float: ...

    def rank(
        self, user: str, items: Sequence[str], x: Mapping[str, Features] | None = ..., /
    ) -> list[str]: ...


# Every learner by name, built from the job's settings as the job builds it.
LEARNERS: dict[str, Callable[[LearningSettings], Learner]] = {
    "online_mf": OnlineMF.from_settings,
    "covisitation": CoVisitation.from_settings,
    "propensity": Trainer.from_settings,
}
