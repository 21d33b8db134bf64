"""Feast feature repository: entities, feature views, push sources, feature service."""
