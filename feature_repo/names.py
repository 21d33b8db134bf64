"""The names everyone uses for the feature views, without importing Feast.

The job's Python workers, the writer and serving name views by these constants;
``features.py`` defines the views under the same names (a unit test keeps them equal).
"""

USER_PROFILE = "user_profile"
ITEM_STATS = "item_stats"
USER_CF = "user_cf"
ITEM_CF = "item_cf"
# Item metadata from the catalog topic (writer/catalog.py), not from events.
ITEM_CATALOG = "item_catalog"

# The entity key column of each view.
ENTITY_OF_VIEW = {
    USER_PROFILE: "user_id",
    ITEM_STATS: "item_id",
    USER_CF: "user_id",
    ITEM_CF: "item_id",
    ITEM_CATALOG: "item_id",
}

# Views keyed by user: what an erasure or an opt-out clears.
USER_VIEWS = tuple(view for view, entity in ENTITY_OF_VIEW.items() if entity == "user_id")

__all__ = [
    "ENTITY_OF_VIEW",
    "ITEM_CATALOG",
    "ITEM_CF",
    "ITEM_STATS",
    "USER_CF",
    "USER_PROFILE",
    "USER_VIEWS",
]
