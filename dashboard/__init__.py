"""Live dashboard: scrapes the job, writer and serving metrics endpoints and plots them.

``personalize dashboard`` (or ``python -m dashboard``) runs it on
``settings.metrics.dashboard_port``; ``personalize up`` starts it with the stack.
"""
