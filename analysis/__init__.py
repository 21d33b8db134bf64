"""Offline analysis: replay evaluation of the recommenders and the A/B report."""

__all__: list[str] = []
