"""Find retained checkpoints so a restarted job resumes where the last one stopped."""

from __future__ import annotations

from pathlib import Path


def latest_checkpoint(checkpoint_root: Path) -> Path | None:
    """The newest completed checkpoint (a ``chk-N`` folder with ``_metadata``) under any
    job id in ``checkpoint_root``, or None."""
    if not checkpoint_root.is_dir():
        return None
    completed = [chk for chk in checkpoint_root.glob("*/chk-*") if (chk / "_metadata").is_file()]
    if not completed:
        return None
    return max(completed, key=lambda p: (p.stat().st_mtime, int(p.name.split("-")[1])))
