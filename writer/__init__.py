"""The online-store writer process: the job's changelog (``feature_updates``) into Redis."""

__all__: list[str] = []
