"""Early stopping on a monitored validation value."""

from __future__ import annotations

import math
from typing import Any




class EarlyStopping:
    """Stop when the monitored value has not improved for ``patience`` epochs.

    ``step(value, epoch)`` records one evaluation; an improvement is a value better than the
    best so far by more than ``min_delta`` (NaN never improves). ``should_stop`` becomes true
    once ``epoch - best_epoch >= patience``; ``patience <= 0`` never stops.
    """

    def __init__(self, patience: int, mode: str = "max", min_delta: float = 0.0) -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.patience = int(patience)
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.best_epoch: int = -1
        self.last_epoch: int = -1

    def is_better(self, value: float) -> bool:
        """Whether ``value`` improves on the best so far."""
        if value is None or math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def step(self, value: float, epoch: int) -> bool:
        """Record ``value`` at ``epoch``; return True when it is a new best."""
        self.last_epoch = int(epoch)
        if self.is_better(value):
            self.best = float(value)
            self.best_epoch = int(epoch)
            return True
        return False

    @property
    def should_stop(self) -> bool:
        """True when ``patience`` epochs have passed since the best epoch."""
        if self.patience <= 0 or self.last_epoch < 0:
            return False
        reference = self.best_epoch if self.best_epoch >= 0 else -1
        return self.last_epoch - reference >= self.patience

    def state_dict(self) -> dict[str, Any]:
        """Serialisable state (plain numbers) for the resumable state file."""
        return {
            "patience": self.patience,
            "mode": self.mode,
            "min_delta": self.min_delta,
            "best": float("nan") if self.best is None else self.best,
            "has_best": self.best is not None,
            "best_epoch": self.best_epoch,
            "last_epoch": self.last_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.best = float(state["best"]) if state["has_best"] else None
        self.best_epoch = int(state["best_epoch"])
        self.last_epoch = int(state["last_epoch"])
