"""Shared core: settings, the event schema, Feast glue, local infrastructure, the CLI."""
