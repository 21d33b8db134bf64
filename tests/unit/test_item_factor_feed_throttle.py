"""The item-factor feed's throttle (flink_jobs/item_factor_feed.FeedThrottle)."""

from __future__ import annotations

from flink_jobs.item_factor_feed import FeedThrottle


def test_the_first_change_goes_at_once_and_later_ones_in_the_interval_are_held() -> None:
    feed = FeedThrottle(every_ms=100)
    assert feed.offer("a", now_ms=1_000, event_time_ms=50)
    assert not feed.offer("a", now_ms=1_030, event_time_ms=60)
    assert not feed.offer("a", now_ms=1_060, event_time_ms=55)  # out of order in event time
    assert feed.held == {"a": 60}
    # Another item is not held back by this one.
    assert feed.offer("b", now_ms=1_060, event_time_ms=61)


def test_a_change_after_the_interval_goes_at_once_and_takes_what_was_held_with_it() -> None:
    feed = FeedThrottle(every_ms=100)
    assert feed.offer("a", now_ms=1_000, event_time_ms=50)
    assert not feed.offer("a", now_ms=1_050, event_time_ms=60)
    assert feed.offer("a", now_ms=1_100, event_time_ms=70)
    assert "a" not in feed.held
    # The row timer then has nothing to release.
    assert feed.release("a", now_ms=1_200) is None


def test_the_row_timer_releases_the_newest_held_change_with_its_event_time() -> None:
    feed = FeedThrottle(every_ms=100)
    feed.offer("a", now_ms=1_000, event_time_ms=50)
    feed.offer("a", now_ms=1_010, event_time_ms=80)
    assert feed.release("a", now_ms=1_500) == 80
    assert feed.release("a", now_ms=1_501) is None
    # The release counts as a record: a change right after it is held again.
    assert not feed.offer("a", now_ms=1_550, event_time_ms=90)
    assert feed.release("a", now_ms=1_700) == 90


def test_items_published_more_than_an_interval_ago_are_forgotten() -> None:
    feed = FeedThrottle(every_ms=100)
    for i in range(1_000):
        feed.offer(f"i{i}", now_ms=i, event_time_ms=i)
    assert len(feed.sent) <= 101
    assert not feed.held
