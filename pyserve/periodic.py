"""A piece of work repeated on a thread of its own (metrics sampled or written out)."""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("pyserve")


class Periodic:
    """Calls `work` every `interval_s` seconds, the first time at start and the last at stop,
    on a thread of its own."""

    def __init__(self, work, interval_s: float, name: str) -> None:
        self._work = work
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _run(self) -> None:
        while True:
            stopped = self._stop.is_set()
            try:
                self._work()
            except Exception:  # noqa: BLE001 - a failed round must not stop the next
                log.exception("%s failed", self._thread.name)
            if stopped:
                return
            self._stop.wait(self._interval)
