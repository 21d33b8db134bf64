"""Re-reading the API keys file when it changes (used by every gRPC server: serving,
the dispatcher), so keys rotate without a restart.

:class:`KeysFileWatcher` looks at the file's inode, mtime and size every ``interval_s``
in a background thread and swaps the policy's keys when they changed; a file that does
not parse keeps the keys in force and logs one error.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from personalization.access import AccessPolicy, KeysFileError, load_keys_file

__all__ = ["KeysFileWatcher", "file_signature"]

log = logging.getLogger(__name__)


def file_signature(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is replaced or edited (None: it is missing)."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class KeysFileWatcher:
    """Reloads the policy's keys when the keys file changes."""

    def __init__(
        self,
        path: str | Path,
        policy: AccessPolicy,
        interval_s: float = 1.0,
        *,
        loaded: tuple[int, int, int] | None = None,
    ) -> None:
        """``loaded``: the file's signature when the policy's keys were read from it
        (default: now)."""
        self.path = Path(path)
        self._policy = policy
        self._interval_s = interval_s
        self._seen = loaded if loaded is not None else file_signature(self.path)
        # The last state reported as a problem, so a bad file is logged once, not every poll.
        self._reported: tuple[int, int, int] | str | None = "ok"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """Reload if the file changed; True if new keys are in force."""
        signature = file_signature(self.path)
        if signature == self._seen:
            return False
        self._seen = signature
        if signature is None:
            if self._reported != signature:
                self._reported = signature
                log.error("api keys file %s is missing; keeping the previous keys", self.path)
            return False
        try:
            keys = load_keys_file(self.path)
        except KeysFileError as exc:
            if self._reported != signature:
                self._reported = signature
                log.error("%s; keeping the previous keys", exc)
            return False
        self._reported = "ok"
        self._policy.replace_keys(keys)
        log.info("api keys reloaded from %s: %d keys", self.path, len(keys))
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.check()
            except Exception:  # a watcher that dies would freeze the keys silently
                log.exception("api keys reload of %s failed", self.path)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="api-keys", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
