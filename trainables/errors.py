"""The package's exceptions.

Everything a user can cause (a bad file, a bad config value) raises a ``BoxtuneError``
subclass; the CLI prints those as one line and exits with status 2. Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

__all__ = ["BoxtuneError", "ConfigError", "DataError", "TrainingError", "NonFiniteLossError", "OutOfMemoryError"]


class BoxtuneError(Exception):
    """Base class for errors caused by user input or user data."""


class ConfigError(BoxtuneError, ValueError):
    """A config key has a value boxtune cannot use. The message names the key."""


class DataError(BoxtuneError):
    """A dataset file or record is unusable. The message names the file and the record."""


class TrainingError(BoxtuneError):
    """A trial cannot go on (for example its checkpoint does not match its config)."""


class NonFiniteLossError(TrainingError):
    """The training loss became NaN or infinite; the message names the epoch and step."""

    def __init__(self, epoch: int, step: int, losses: dict[str, float]):
        self.epoch, self.step, self.losses = epoch, step, dict(losses)
        parts = ", ".join(f"{k}={v:.4g}" for k, v in losses.items())
        super().__init__(f"non-finite loss at epoch {epoch}, step {step}: {parts}")

    def __reduce__(self):
        # Ray copies and pickles exceptions across processes; rebuild from the original arguments
        return (type(self), (self.epoch, self.step, self.losses))


class OutOfMemoryError(TrainingError):
    """A trial outgrew the GPU memory it may hold; the message says how much it had and which
    settings shrink it."""
