"""Heartbeat lines for long loops whose stderr goes to a log file (issue 18, "progress people can follow").

tqdm draws a bar on a terminal but is disabled when stderr is a file, so a Snakemake job log says nothing
until the job ends. A :class:`Heartbeat` fills that gap: when stderr is not a terminal it writes, at most
once every ``DORMANT_HEARTBEAT_SECONDS`` seconds (default 30; 0: at every update) and once at the end,

    [heartbeat] train badnets 1280/5000 (25.6%) 412.3 img/s elapsed 0:00:03 eta 0:00:09 loss=1.94

Field values may be callables, called only when a line is written, so a hot loop can pass
``loss=lambda: float(loss)`` without a host synchronisation at every step.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable

ENV = "DORMANT_HEARTBEAT_SECONDS"
DEFAULT_SECONDS = 30.0


def interval_from_env() -> float:
    """Seconds between lines from ``DORMANT_HEARTBEAT_SECONDS`` (default 30; 0 writes at every update)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return DEFAULT_SECONDS
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ENV}={raw!r}: expected a number of seconds (0: a line at every update)") from None
    if value < 0:
        raise ValueError(f"{ENV}={raw!r}: expected a number of seconds >= 0")
    return value


def clock_format(seconds: float | None) -> str:
    """H:MM:SS (``?`` when unknown)."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "?"
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def read_later(t) -> Callable[[], float]:
    """A field for a tensor (e.g. the step's loss) that is read back to the host only if a line is written."""
    t = t.detach()
    return lambda: float(t)


def _value(v) -> str:
    if callable(v):
        v = v()
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


class Heartbeat:
    """Progress of one loop as rate-limited log lines: ``update(n, **fields)`` after each step, then ``close()``
    (or use it as a context manager). Silent when ``stream`` is a terminal (tqdm's bar is shown there)."""

    def __init__(self, label: str, total: int | None = None, *, unit: str = "it", initial: int = 0,
                 interval: float | None = None, stream=None, clock: Callable[[], float] = time.monotonic,
                 enabled: bool | None = None):
        self.label, self.total, self.unit = label, total, unit
        self.done = self.start_done = initial
        self.interval = interval_from_env() if interval is None else float(interval)
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        if enabled is None:
            isatty = getattr(self.stream, "isatty", None)
            enabled = not (isatty is not None and isatty())
        self.enabled = enabled
        self.t0 = self.last = clock()
        self.fields: dict = {}
        self.closed = False
        self.lines = 0

    def update(self, n: int = 1, **fields) -> None:
        """``n`` more units done; ``fields`` (values or callables) are shown on the next line written."""
        self.done += n
        if fields:
            self.fields.update(fields)
        if not self.enabled:
            return
        now = self.clock()
        if now - self.last >= self.interval:
            self._emit(now)

    def close(self, *, status: str = "done", **fields) -> None:
        """Writes the final line (once), ending in ``status`` instead of the ETA."""
        if self.closed:
            return
        self.closed = True
        if fields:
            self.fields.update(fields)
        if self.enabled:
            self._emit(self.clock(), final=status)

    def line(self, now: float, final: str | None = None) -> str:
        """The text of a line at time ``now``: progress, rate, elapsed, ETA, then the fields as k=v."""
        elapsed = now - self.t0
        done_here = self.done - self.start_done
        rate = done_here / elapsed if elapsed > 0 else None
        parts = ["[heartbeat]", self.label]
        if self.total:
            parts.append(f"{self.done}/{self.total} ({100.0 * self.done / self.total:.1f}%)")
        else:
            parts.append(str(self.done))
        parts.append(f"{rate:.4g} {self.unit}/s" if rate is not None else f"? {self.unit}/s")
        parts.append(f"elapsed {clock_format(elapsed)}")
        if final:
            parts.append(final)
        elif self.total:
            left = max(0, self.total - self.done)
            eta = 0.0 if left == 0 else (left / rate if rate else None)
            parts.append(f"eta {clock_format(eta)}")
        for k, v in self.fields.items():
            try:
                parts.append(f"{k}={_value(v)}")
            except Exception as e:  # a field must never break the loop it reports on
                parts.append(f"{k}=<{type(e).__name__}>")
        return " ".join(parts)

    def _emit(self, now: float, final: str | None = None) -> None:
        self.last = now
        self.lines += 1
        try:
            print(self.line(now, final), file=self.stream, flush=True)
        except (OSError, ValueError):  # a closed or broken log stream is not the loop's problem
            self.enabled = False

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(status="done" if exc_type is None else f"stopped ({exc_type.__name__})")
