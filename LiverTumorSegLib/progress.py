"""Progress events and cancellation, passed through one callback from the pipeline to front ends."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable, Optional

from .errors import CancelledError


@dataclass(frozen=True)
class ProgressEvent:
    """One step of progress: ``stage`` is a short id ("load", "liver", "crop", "tumor:NAME",
    "postprocess", "measure", "write"); ``fraction`` is the stage's completion in [0, 1]."""

    stage: str
    fraction: float
    message: str = ""

    def to_dict(self) -> dict:
        return {"event": "progress", "stage": self.stage, "fraction": round(float(self.fraction), 4),
                "message": self.message}


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass
class Progress:
    """Reports progress to an optional callback and raises :class:`CancelledError` once the
    cancel flag is set (checked at every report, so long loops stop promptly)."""

    callback: Optional[ProgressCallback] = None
    cancel_event: threading.Event = field(default_factory=threading.Event)

    def report(self, stage: str, fraction: float, message: str = "") -> None:
        self.check_cancelled()
        if self.callback is not None:
            self.callback(ProgressEvent(stage, max(0.0, min(1.0, fraction)), message))

    def cancel(self) -> None:
        self.cancel_event.set()

    def check_cancelled(self) -> None:
        if self.cancel_event.is_set():
            raise CancelledError()
