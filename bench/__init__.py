"""Benchmarks of the platform on a private local stack: ``python -m bench <scenario>``."""

__all__: list[str] = []
