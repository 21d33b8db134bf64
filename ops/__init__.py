"""Operating the platform: the ``personalize`` CLI, the local stack launcher and infra control."""

__all__: list[str] = []
