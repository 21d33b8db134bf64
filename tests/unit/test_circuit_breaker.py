"""The request path's circuit breaker around Redis reads."""

from __future__ import annotations

import pytest

from serving.circuit_breaker import CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only():
    clock = Clock()
    breaker = CircuitBreaker(failures=3, open_s=0.5, clock=clock)
    breaker.failed("timeout")
    breaker.failed("timeout")
    breaker.succeeded()  # a success in between resets the count
    breaker.failed("timeout")
    breaker.failed("timeout")
    assert breaker.allow() and not breaker.is_open
    breaker.failed("refused")
    assert breaker.is_open and breaker.last_error == "refused"
    assert not breaker.allow()


def test_one_probe_per_open_period_then_closes_on_success():
    clock = Clock()
    breaker = CircuitBreaker(failures=1, open_s=0.5, clock=clock)
    breaker.failed("down")
    assert not breaker.allow()
    clock.now += 0.5
    assert breaker.allow()  # the probe
    assert not breaker.allow()  # everyone else still fails fast
    breaker.failed("still down")  # probe failed: open again for a full period
    clock.now += 0.4
    assert not breaker.allow()
    clock.now += 0.1
    assert breaker.allow()
    breaker.succeeded()
    assert not breaker.is_open
    assert all(breaker.allow() for _ in range(5))


def test_rejects_a_threshold_below_one():
    with pytest.raises(ValueError):
        CircuitBreaker(failures=0, open_s=1.0)
