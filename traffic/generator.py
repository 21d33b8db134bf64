"""A built-in, deterministic generator of realistic shopping sessions.

The generator simulates a shop: a catalog of items in categories with Zipf popularity
and per-category price levels, and a population of users with demographics, a home
country, a favourite device and a few preferred categories. Each user runs sessions:

* a landing ``page_view`` (home, a category page or a product page, by referrer);
* bounces: some sessions end within seconds of landing (a quick exit);
* browsing: ``product_view`` events that mostly stay within the user's preferred
  categories (a random walk: stay in the category, hop to another preferred one, or
  wander), with ``search``, recommendation ``click`` and ``dwell`` events mixed in;
* ``add_to_cart`` (cheaper items more often), ``remove_from_cart``, ``favorite``;
* at the end a checkout (one ``purchase`` per cart line: unit ``price`` ×
  ``quantity``) or an abandoned cart;
* ``rating`` events for earlier purchases at the start of a later session.

Gaps are realistic: seconds between events of a session, minutes to hours between
sessions of a user. All users run concurrently; the yielded stream is ordered by
event time. Events are dicts in the wire format of :mod:`personalization.events`
(``event_time`` in ms, unique ``event_id``).

Determinism: the same :class:`GeneratorConfig` gives the same events, byte for byte
(except the times in live mode, which follow the wall clock).

Live mode (``live=True``): the timeline is anchored at the wall clock when iteration
starts and (with ``pace=True``) the iterator sleeps until each event is due, so event
times track the wall clock; ``speed`` > 1 compresses the simulated gaps. A consumer
slower than the simulation shifts the timeline forward so no event is ever stamped
in the past.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import math
import random
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from personalization import events as ev

# 2024-01-01T00:00:00Z: the default start of the (non-live) simulated timeline.
DEFAULT_START_MS = 1_704_067_200_000

_CATEGORY_NAMES: tuple[tuple[str, float], ...] = (
    # (name, median price)
    ("electronics", 180.0),
    ("shoes", 70.0),
    ("books", 14.0),
    ("fashion", 40.0),
    ("home", 45.0),
    ("beauty", 22.0),
    ("sports", 55.0),
    ("toys", 25.0),
    ("grocery", 6.0),
    ("garden", 35.0),
    ("jewelry", 120.0),
    ("music", 18.0),
    ("automotive", 60.0),
    ("pets", 20.0),
    ("office", 15.0),
    ("health", 18.0),
    ("computers", 450.0),
    ("kitchen", 38.0),
    ("baby", 28.0),
    ("games", 50.0),
)
AGE_BANDS = ("18-24", "25-34", "35-44", "45-54", "55-64", "65+")
_AGE_WEIGHTS = (0.17, 0.30, 0.22, 0.15, 0.10, 0.06)
GENDERS = ("F", "M")
DEVICES = ("mobile", "desktop", "app")
_DEVICE_WEIGHTS = (0.55, 0.30, 0.15)
_COUNTRIES = ("DE", "US", "GB", "FR", "NL", "PL", "ES", "IT", "SE", "AT")
_COUNTRY_WEIGHTS = (0.25, 0.20, 0.12, 0.10, 0.07, 0.07, 0.06, 0.06, 0.04, 0.03)
# (referrer, weight, bounce multiplier)
_REFERRERS: tuple[tuple[str, float, float], ...] = (
    ("", 0.30, 0.7),  # direct / typed / bookmark
    ("https://www.google.com/", 0.30, 1.0),
    ("https://www.instagram.com/", 0.10, 1.8),
    ("https://www.facebook.com/", 0.07, 1.6),
    ("email:newsletter", 0.10, 0.8),
    ("https://partner.example.com/deals", 0.08, 1.3),
    ("https://www.bing.com/", 0.05, 1.0),
)
_SEARCH_TERMS = ("sale", "new", "best", "cheap", "gift", "premium", "black", "set", "mini")
_WIDGETS = ("recs_home", "recs_pdp", "also_bought", "banner")


@dataclass(frozen=True, slots=True)
class GeneratorConfig:
    """Knobs of the simulation. Probabilities are per opportunity (see the code)."""

    seed: int = 0
    n_users: int = 1_000
    n_items: int = 5_000
    n_categories: int = 20
    zipf_exponent: float = 1.05
    # Non-live start of the timeline (ms); None = DEFAULT_START_MS.
    start_ms: int | None = None
    # Live mode: anchor at the wall clock and (pace) sleep until events are due.
    live: bool = False
    pace: bool = True
    speed: float = 1.0
    # Ids are f"{id_prefix}-{sequence}"; empty = f"gen{seed}". Give each live run its
    # own prefix if the pipeline deduplicates by event_id across runs.
    id_prefix: str = ""
    # Mean gap between two sessions of a user (exponential, scaled per user).
    mean_session_gap_s: float = 2 * 3600.0
    # Sessions.
    bounce_rate: float = 0.25
    mean_session_steps: float = 9.0
    stay_in_category: float = 0.65
    hop_to_preferred: float = 0.25
    add_to_cart_rate: float = 0.14
    remove_from_cart_rate: float = 0.12
    favorite_rate: float = 0.05
    search_rate: float = 0.08
    click_rate: float = 0.10
    dwell_rate: float = 0.25
    checkout_rate: float = 0.45
    rating_rate: float = 0.35


@dataclass(slots=True)
class _Item:
    item_id: str
    category: str
    price: float


@dataclass(slots=True)
class _Category:
    name: str
    items: list[_Item] = field(default_factory=list)
    cum_weights: list[float] = field(default_factory=list)

    def pick(self, rng: random.Random) -> _Item:
        x = rng.random() * self.cum_weights[-1]
        return self.items[bisect.bisect_right(self.cum_weights, x)]


class Catalog:
    """Items with Zipf popularity, grouped in categories with per-category prices."""

    def __init__(self, config: GeneratorConfig) -> None:
        if config.n_categories < 1 or config.n_items < config.n_categories:
            raise ValueError("need n_categories >= 1 and n_items >= n_categories")
        rng = random.Random(f"catalog:{config.seed}")
        names: list[tuple[str, float]] = []
        for i in range(config.n_categories):
            name, median = _CATEGORY_NAMES[i % len(_CATEGORY_NAMES)]
            if i >= len(_CATEGORY_NAMES):
                name = f"{name}-{i // len(_CATEGORY_NAMES) + 1}"
            names.append((name, median))
        # Uneven category sizes and shares of traffic (a Dirichlet-like draw).
        shares = [rng.gammavariate(1.5, 1.0) for _ in names]
        total = sum(shares)
        self.categories: list[_Category] = [_Category(name) for name, _ in names]
        self.category_weights = [s / total for s in shares]
        cum_shares = list(itertools.accumulate(self.category_weights))
        self.items: list[_Item] = []
        # Popularity ranks are shuffled over items, so every category has hits.
        ranks = list(range(1, config.n_items + 1))
        rng.shuffle(ranks)
        for i in range(config.n_items):
            # Every category gets at least one item; the rest by share.
            if i < len(names):
                c = i
            else:
                c = min(bisect.bisect_right(cum_shares, rng.random()), len(names) - 1)
            median = names[c][1]
            raw_price = median * math.exp(rng.gauss(0.0, 0.6))
            price = max(0.99, round(math.floor(raw_price) + 0.99, 2))
            item = _Item(f"sku-{i:06d}", names[c][0], price)
            self.items.append(item)
            category = self.categories[c]
            category.items.append(item)
            weight = 1.0 / ranks[i] ** config.zipf_exponent
            prev = category.cum_weights[-1] if category.cum_weights else 0.0
            category.cum_weights.append(prev + weight)
        self._cum_category = list(itertools.accumulate(self.category_weights))

    def random_category(self, rng: random.Random) -> int:
        x = rng.random() * self._cum_category[-1]
        return min(bisect.bisect_right(self._cum_category, x), len(self.categories) - 1)


@dataclass(slots=True)
class _User:
    user_id: str
    age_band: str
    gender: str
    country: str
    device: str
    preferred: list[int]
    gap_scale: float
    rng: random.Random
    sessions: int = 0
    to_rate: list[_Item] = field(default_factory=list)
    pending: deque[tuple[int, dict[str, Any]]] = field(default_factory=deque)


class _Simulation:
    def __init__(self, config: GeneratorConfig, catalog: Catalog) -> None:
        self.config = config
        self.catalog = catalog
        self.users: dict[int, _User] = {}
        self.orders = 0

    def user(self, index: int) -> _User:
        user = self.users.get(index)
        if user is None:
            rng = random.Random(f"user:{self.config.seed}:{index}")
            n_pref = rng.choice((1, 2, 2, 3, 3))
            preferred: list[int] = []
            while len(preferred) < min(n_pref, len(self.catalog.categories)):
                c = self.catalog.random_category(rng)
                if c not in preferred:
                    preferred.append(c)
            user = _User(
                user_id=f"u-{index:06d}",
                age_band=rng.choices(AGE_BANDS, _AGE_WEIGHTS)[0],
                gender=rng.choice(GENDERS),
                country=rng.choices(_COUNTRIES, _COUNTRY_WEIGHTS)[0],
                device=rng.choices(DEVICES, _DEVICE_WEIGHTS)[0],
                preferred=preferred,
                # Heavy and light users: session gaps scale 0.2x .. 5x.
                gap_scale=math.exp(rng.gauss(0.0, 0.8)),
                rng=rng,
            )
            self.users[index] = user
        return user

    def first_session_offset_ms(self, index: int) -> int:
        rng = random.Random(f"start:{self.config.seed}:{index}")
        return int(rng.random() * self.config.mean_session_gap_s * 1000)

    def next_gap_ms(self, user: _User) -> int:
        # Minutes to hours: at least 2 minutes, exponential around the user's mean.
        mean_s = self.config.mean_session_gap_s * user.gap_scale
        return int((120.0 + user.rng.expovariate(1.0 / mean_s)) * 1000)

    # --- one session ---------------------------------------------------------------

    def session(self, user: _User, start_ms: int) -> list[tuple[int, dict[str, Any]]]:
        """The events of one session as (sim time ms, event without id) pairs."""
        cfg = self.config
        rng = user.rng
        cat = self.catalog
        user.sessions += 1
        session_id = f"s-{user.user_id}-{user.sessions}"
        device = user.device if rng.random() < 0.8 else rng.choices(DEVICES, _DEVICE_WEIGHTS)[0]
        if device == "app":
            referrer = rng.choice(("", "", "push:notification"))
            bounce_mult = 0.8
        else:
            ref = rng.choices(_REFERRERS, [r[1] for r in _REFERRERS])[0]
            referrer, bounce_mult = ref[0], ref[2]
        if device == "mobile":
            bounce_mult *= 1.2
        context = {
            "device": device,
            "country": user.country,
            "referrer": referrer,
            "session_id": session_id,
        }
        props = {"age_band": user.age_band, "gender": user.gender}
        out: list[tuple[int, dict[str, Any]]] = []
        now = start_ms

        def emit(event_type: str, page: str, item: _Item | None = None, **extra: Any) -> None:
            # event_id and event_time are filled in when the event is yielded.
            event: dict[str, Any] = {
                "event_id": "",
                "event_time": 0,
                "user_id": user.user_id,
                "event_type": event_type,
            }
            if item is not None:
                event["item_id"] = item.item_id
                event["category"] = item.category
                if event_type in (ev.ADD_TO_CART, ev.REMOVE_FROM_CART, ev.PURCHASE):
                    event["price"] = item.price
            quantity = extra.pop("quantity", 1)
            if quantity != 1:
                event["quantity"] = quantity
            event["context"] = {**context, "page": page}
            event["properties"] = {**props, **{k: str(v) for k, v in extra.items()}}
            out.append((now, event))

        def advance(median_s: float, sigma: float = 0.8, floor_s: float = 1.0) -> None:
            nonlocal now
            seconds = max(floor_s, median_s * math.exp(rng.gauss(0.0, sigma)))
            now += int(seconds * 1000)

        current = rng.choice(user.preferred)
        # Landing page: social and partner traffic lands on a product page.
        landing_item: _Item | None = None
        if referrer.startswith(
            ("https://www.instagram", "https://www.facebook", "https://partner")
        ):
            landing_item = cat.categories[current].pick(rng)
            page = f"/p/{landing_item.item_id}"
        elif rng.random() < 0.4:
            page = f"/c/{cat.categories[current].name}"
        else:
            page = "/"
        emit(ev.PAGE_VIEW, page)

        if rng.random() < min(0.95, cfg.bounce_rate * bounce_mult):
            # A bounce: at most one quick look, gone within a few seconds.
            if landing_item is not None or rng.random() < 0.5:
                item = landing_item or cat.categories[current].pick(rng)
                advance(2.0, 0.5, 0.5)
                emit(ev.PRODUCT_VIEW, f"/p/{item.item_id}", item)
            return out

        # Rate something bought in an earlier session.
        while user.to_rate and rng.random() < cfg.rating_rate:
            item = user.to_rate.pop(0)
            advance(8.0)
            stars = rng.choices((1, 2, 3, 4, 5), (0.05, 0.07, 0.18, 0.35, 0.35))[0]
            emit(ev.RATING, f"/p/{item.item_id}/review", item, rating=stars)
        user.to_rate.clear()

        cart: dict[str, tuple[_Item, int]] = {}
        steps = 1 + int(rng.expovariate(1.0 / max(cfg.mean_session_steps - 1, 0.1)))
        for _ in range(steps):
            r = rng.random()
            if r < cfg.search_rate:
                # Search within the current category or a new preferred one.
                if rng.random() < 0.5:
                    current = rng.choice(user.preferred)
                query = f"{cat.categories[current].name} {rng.choice(_SEARCH_TERMS)}"
                advance(6.0)
                emit(ev.SEARCH, f"/search?q={query.replace(' ', '+')}", query=query)
                item = cat.categories[current].pick(rng)
            elif r < cfg.search_rate + cfg.click_rate:
                # A click on a recommendation widget (often popular items anywhere).
                c = current if rng.random() < 0.6 else cat.random_category(rng)
                item = cat.categories[c].pick(rng)
                current = c
                advance(10.0)
                emit(ev.CLICK, page, item, widget=rng.choice(_WIDGETS))
            else:
                u = rng.random()
                if u < cfg.stay_in_category:
                    pass
                elif u < cfg.stay_in_category + cfg.hop_to_preferred:
                    current = rng.choice(user.preferred)
                else:
                    current = cat.random_category(rng)
                item = cat.categories[current].pick(rng)
            advance(4.0 if r < cfg.search_rate + cfg.click_rate else 15.0)
            page = f"/p/{item.item_id}"
            emit(ev.PRODUCT_VIEW, page, item)
            look_s = 25.0 * math.exp(rng.gauss(0.0, 0.9))
            if rng.random() < cfg.dwell_rate:
                now += int(look_s * 1000)
                emit(ev.DWELL, page, item, dwell_ms=int(look_s * 1000))
            # Cheap items go to the cart more readily.
            cart_p = cfg.add_to_cart_rate * min(2.0, (40.0 / item.price) ** 0.25)
            if rng.random() < cart_p:
                advance(5.0)
                quantity = 1 if rng.random() < 0.85 else rng.randint(2, 3)
                previous = cart.get(item.item_id)
                cart[item.item_id] = (item, quantity + (previous[1] if previous else 0))
                emit(ev.ADD_TO_CART, page, item, quantity=quantity)
            elif rng.random() < cfg.favorite_rate:
                advance(3.0)
                emit(ev.FAVORITE, page, item)
            if cart and rng.random() < cfg.remove_from_cart_rate:
                line_item, qty = cart.pop(rng.choice(sorted(cart)))
                advance(8.0)
                emit(ev.REMOVE_FROM_CART, "/cart", line_item, quantity=qty)

        if cart and rng.random() < cfg.checkout_rate:
            advance(20.0)
            emit(ev.PAGE_VIEW, "/cart")
            advance(45.0, 0.6, 5.0)
            self.orders += 1
            order_id = f"o-{user.user_id}-{user.sessions}"
            for line_item, qty in cart.values():
                emit(ev.PURCHASE, "/checkout/complete", line_item, quantity=qty, order_id=order_id)
                user.to_rate.append(line_item)
        # Otherwise the cart (if any) is abandoned.
        return out


WallClockMs = Callable[[], int]
Sleep = Callable[[float], None]


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class TrafficGenerator:
    """Iterate over :meth:`events` for a time-ordered stream of wire-format dicts."""

    def __init__(
        self,
        config: GeneratorConfig | None = None,
        *,
        clock_ms: WallClockMs = _wall_clock_ms,
        sleep: Sleep = time.sleep,
    ) -> None:
        self.config = config or GeneratorConfig()
        if self.config.n_users < 1:
            raise ValueError("n_users must be >= 1")
        if self.config.speed <= 0:
            raise ValueError("speed must be > 0")
        self.catalog = Catalog(self.config)
        self._clock_ms = clock_ms
        self._sleep = sleep

    def events(self, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Yield up to ``limit`` events (forever when None), ordered by event time."""
        cfg = self.config
        sim = _Simulation(cfg, self.catalog)
        prefix = cfg.id_prefix or f"gen{cfg.seed}"
        heap: list[tuple[int, int]] = [
            (sim.first_session_offset_ms(i), i) for i in range(cfg.n_users)
        ]
        heapq.heapify(heap)
        if cfg.live:
            anchor = self._clock_ms()
        else:
            anchor = DEFAULT_START_MS if cfg.start_ms is None else cfg.start_ms
        shift = 0  # live mode: how far a slow consumer pushed the timeline
        last_ms = 0
        for seq in itertools.count():
            if limit is not None and seq >= limit:
                return
            offset, index = heap[0]
            user = sim.user(index)
            if not user.pending:
                user.pending.extend(sim.session(user, offset))
            sim_ms, event = user.pending.popleft()
            if user.pending:
                heapq.heapreplace(heap, (user.pending[0][0], index))
            else:
                heapq.heapreplace(heap, (sim_ms + sim.next_gap_ms(user), index))
            if cfg.live:
                when = anchor + shift + int(sim_ms / cfg.speed)
                now = self._clock_ms()
                if when < now:
                    shift += now - when
                    when = now
                elif cfg.pace and when > now:
                    self._sleep((when - now) / 1000.0)
                event_time = max(when, last_ms)
            else:
                event_time = anchor + sim_ms
            last_ms = event_time
            event["event_id"] = f"{prefix}-{seq:09d}"
            event["event_time"] = event_time
            yield event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.events()


def generate_events(
    n: int,
    *,
    seed: int = 0,
    start_ms: int | None = None,
    live: bool = False,
    **config: Any,
) -> list[dict[str, Any]]:
    """The first ``n`` events of a simulation (see :class:`GeneratorConfig`)."""
    cfg = GeneratorConfig(seed=seed, start_ms=start_ms, live=live, **config)
    return list(TrafficGenerator(cfg).events(limit=n))
