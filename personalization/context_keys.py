"""The request / event context values popularity is kept by (pure, shared by the job
and serving, so both spell a context the same way).

A context is the country and device of an event (``Event.country`` / ``device``) or of
a Recommend request (``RecommendRequest.context``). Popularity is kept per country, per
device and per country+device; serving looks the most specific one up first:

>>> context_keys("de", "Mobile")
('c=DE&d=mobile', 'c=DE', 'd=mobile')
>>> [describe(key) for key in context_keys("DE", "mobile")]
['popular in DE on mobile', 'popular in DE', 'popular on mobile']
>>> context_keys("", "")
()
"""

from __future__ import annotations

__all__ = ["context_keys", "describe"]


def context_keys(country: str, device: str) -> tuple[str, ...]:
    """The context's keys, most specific first (normalised as events are: country upper
    case, device lower case); empty when the context names neither."""
    country, device = country.strip().upper(), device.strip().lower()
    if country and device:
        return (f"c={country}&d={device}", f"c={country}", f"d={device}")
    if country:
        return (f"c={country}",)
    if device:
        return (f"d={device}",)
    return ()


def describe(key: str) -> str:
    """The reason an item popular in this context is shown for."""
    parts = dict(part.split("=", 1) for part in key.split("&") if "=" in part)
    country, device = parts.get("c", ""), parts.get("d", "")
    if country and device:
        return f"popular in {country} on {device}"
    if country:
        return f"popular in {country}"
    return f"popular on {device}" if device else "trending now"
