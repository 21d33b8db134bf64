"""Price drops of items in carts (pure): the ``price_drop`` rules of the rule file.

A user's operator sees only that user's events, so it never learns that an item got
cheaper while the user was away. The item's operator sees every event of the item, the
prices they carry and who added it to a cart (add-to-cart, remove-from-cart and purchase
events all reach it). So the item keeps a bounded record of its carts, per user:
when added, at what price, and when each rule last fired for that user; an event that
shows a price at least ``min_drop`` below the price a user added the item at, within
``within`` of adding it, fires the rule for that user, at most once per cooldown.

Prices come from the events (``price`` of product views, carts, purchases) and from the
item catalog (``Catalog.UpsertItems``, the ``catalog`` topic, ``personalize catalog
import``: :func:`catalog_price_event`), so "the price" is the newest one the item
operator has seen, and a price cut in the catalog fires the rule without waiting for
the item's next event. A removal or a purchase forgets
the user's cart entry; so does the bound, oldest entries first.
"""

from __future__ import annotations

from collections.abc import Sequence

from personalization.catalog_records import CatalogItem
from personalization.events import ADD_TO_CART, PURCHASE, REMOVE_FROM_CART, Event
from personalization.trigger_rules import PRICE_DROP, PriceDropRule, Rule
from personalization.triggers import Trigger

__all__ = [
    "CATALOG_PRICE",
    "MAX_CARTS",
    "CartEntry",
    "catalog_price_event",
    "price_drop_rules",
    "price_drops",
    "track_cart",
]

# The event type of a catalog record's price for the item operator: not a behaviour
# (no user, no popularity), only the item's category and price.
CATALOG_PRICE = "catalog_price"

# Carts remembered per item: the newest adds win (a popular item's state stays small).
MAX_CARTS = 200

# user id -> [added at (event time ms), price then, {rule name: last fired ms}]
CartEntry = list


def catalog_price_event(item: CatalogItem, now_ms: int) -> Event | None:
    """A catalog record's price as an item event (no user), or None when it carries no
    price (a deletion, a record without one). Timed at the record's ``updated_at``, else
    when it was read."""
    if item.deleted or item.price <= 0:
        return None
    t = item.updated_ms or now_ms
    return Event(
        event_id=f"catalog:{item.item_id}:{t}",
        user_id="",
        event_type=CATALOG_PRICE,
        event_time_ms=t,
        item_id=item.item_id,
        category=item.category,
        price=item.price,
    )


def price_drop_rules(rules: Sequence[Rule]) -> tuple[PriceDropRule, ...]:
    return tuple(r for r in rules if r.kind == PRICE_DROP and isinstance(r, PriceDropRule))


def track_cart(carts: dict[str, CartEntry], event: Event, price: float) -> bool:
    """Fold a cart event of the item into ``carts``; True if they changed. ``price`` is
    the item's price as of this event (the event's, else the last one seen)."""
    user, t = event.user_id, event.event_time_ms
    if event.event_type == ADD_TO_CART:
        entry = carts.get(user)
        if entry is not None and entry[0] > t:
            return False  # a later add is already recorded (events interleave)
        fired = entry[2] if entry is not None else {}
        carts.pop(user, None)  # re-inserted last: the dict is oldest-first
        carts[user] = [t, price, fired]
        while len(carts) > MAX_CARTS:
            del carts[next(iter(carts))]
        return True
    if event.event_type in (REMOVE_FROM_CART, PURCHASE):
        entry = carts.get(user)
        if entry is not None and entry[0] <= t:
            del carts[user]
            return True
    return False


def price_drops(
    carts: dict[str, CartEntry],
    event: Event,
    rules: Sequence[PriceDropRule],
) -> list[Trigger]:
    """The triggers the price of ``event`` fires for the users who have the item in a
    cart (the acting user's own cart aside: they see the price they act at)."""
    price = event.price
    if price <= 0 or not rules or not carts:
        return []
    t = event.event_time_ms
    fired: list[Trigger] = []
    for user, (added_ms, added_price, last) in carts.items():
        if user == event.user_id or added_price <= 0 or t < added_ms:
            continue
        drop = (added_price - price) / added_price
        for rule in rules:
            if drop < rule.min_drop or t - added_ms > rule.within_ms:
                continue
            if not rule.where.matches(event):
                continue
            # Once per cart add; with a cooldown, again once it has passed.
            previous = last.get(rule.name)
            if previous is not None and (rule.cooldown_ms <= 0 or t - previous < rule.cooldown_ms):
                continue
            last[rule.name] = t
            fired.append(
                Trigger(
                    user,
                    rule.name,
                    t,
                    {
                        "item_id": event.item_id,
                        "price_added": added_price,
                        "price_now": price,
                        "drop": round(drop, 4),
                        "added_ms": added_ms,
                        "event_ids": [event.event_id],
                    },
                    PRICE_DROP,
                )
            )
    return fired
