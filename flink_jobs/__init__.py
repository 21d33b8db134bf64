"""PyFlink jobs and the pure per-user / per-item logic they wire together."""
