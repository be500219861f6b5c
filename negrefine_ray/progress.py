"""Progress of a long driver loop: on a terminal one bar with rate and ETA, redrawn in place; without
one (CI, `ray job submit` logs) one log line at most every `every` seconds, and a last one at the end.

    progress = Progress("filter: judge 'qwen'", total=73_037, unit="questions")
    progress.update(512)  # after each chunk
    progress.close()
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

log = logging.getLogger(__name__)
LOG_EVERY_S = 10.0


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        *,
        every: float = LOG_EVERY_S,
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit, self.every = what, total, unit, every
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.done = 0
        self.start = self.last = clock()
        self.lines = 0  # log lines written (without a terminal)
        self.logged = -1  # `done` at the last log line

    def line(self) -> str:
        """ "what: 1,024/73,037 questions (1.4%), 51.2 questions/s, ETA 23m26s"."""
        elapsed = self.clock() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        share = f" ({100 * self.done / self.total:.1f}%)" if self.total else ""
        eta = _duration((self.total - self.done) / rate) if rate > 0 and self.total > self.done else "-"
        done = f"{self.done:,}/{self.total:,} {self.unit}{share}"
        return f"{self.what}: {done}, {rate:,.1f} {self.unit}/s, ETA {eta}"

    def update(self, n: int) -> None:
        self.done += n
        now = self.clock()
        if self.tty:
            self._draw()
        elif now - self.last >= self.every:
            self._log()
        else:
            return
        self.last = now

    def _draw(self) -> None:
        width = 24
        filled = int(width * self.done / self.total) if self.total else width
        self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.line()}\033[K")
        self.stream.flush()

    def _log(self) -> None:
        log.info("%s", self.line())
        self.lines, self.logged = self.lines + 1, self.done

    def close(self) -> None:
        """The final state: the bar's last redraw and a newline, or a last log line."""
        if self.tty:
            self._draw()
            self.stream.write("\n")
            self.stream.flush()
        elif self.lines and self.logged != self.done:  # a loop that logged says it finished
            self._log()


def interactive() -> bool:
    """True when the driver writes to a terminal (Ray Data draws its own bars there)."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def ray_stage_progress(what: str, total: int, unit: str) -> Progress | None:
    """Progress of a Ray Data pass consumed by the driver: None on a terminal, where Ray Data's own
    bars show it; without one, a Progress that logs a line at most every LOG_EVERY_S seconds (Ray
    Data's own logging is off then: distributed.session.quiet_ray_data)."""
    return None if interactive() else Progress(what, total, unit, tty=False)
