"""Where an epoch's wall time goes: a Keras callback that stamps each epoch.

Keras' own "41s/epoch" starts at on_epoch_begin and ends at on_epoch_end; anything
between one epoch's end and the next one's begin (callbacks, the data iterator of the
next epoch) is in nobody's figure. EpochClock splits every epoch's cycle (from the end
of the one before, or from the start of training) into:

  before    end of the previous epoch → this epoch's on_epoch_begin
  first     on_epoch_begin → the end of the first training step (the input pipeline's
            first batch, the shuffle buffer filled)
  steps     the remaining training steps
  eval      the validation pass
  after     the validation pass's end → on_epoch_end of this callback (other callbacks
            run before it, as Keras calls them in order)

history.json keeps every epoch's split (`epoch_seconds`); the log gets one line per
epoch whose time between epochs (before and after) exceeds OUTSIDE_WARNING of its steps
and validation.
"""

from __future__ import annotations

import logging
import time

import tf_keras as keras

PARTS = ("before", "first", "steps", "eval", "after")
OUTSIDE_WARNING = 0.2  # log an epoch whose cycle is this share more than its steps and validation


class EpochClock(keras.callbacks.Callback):
    """Stamps every epoch (module docstring); `epochs` holds one dict per epoch."""

    def __init__(self, clock=time.monotonic):
        super().__init__()
        self._now = clock
        self.epochs: list[dict[str, float]] = []
        self._last = self._begin = self._first = self._test_begin = self._test_end = None

    def on_train_begin(self, logs=None):
        self._last = self._now()

    def on_epoch_begin(self, epoch, logs=None):
        self._begin, self._first, self._test_begin, self._test_end = self._now(), None, None, None

    def on_train_batch_end(self, batch, logs=None):
        if self._first is None:
            self._first = self._now()

    def on_test_begin(self, logs=None):
        if self._begin is not None:  # only the validation pass inside fit
            self._test_begin = self._now()

    def on_test_end(self, logs=None):
        if self._begin is not None:
            self._test_end = self._now()

    def on_epoch_end(self, epoch, logs=None):
        end = self._now()
        first = self._first if self._first is not None else end
        test_begin = self._test_begin if self._test_begin is not None else end
        test_end = self._test_end if self._test_end is not None else test_begin
        split = {
            "before": self._begin - self._last,
            "first": first - self._begin,
            "steps": test_begin - first,
            "eval": test_end - test_begin,
            "after": end - test_end,
        }
        self.epochs.append({k: round(v, 3) for k, v in split.items()})
        cycle = sum(split.values())
        core = split["first"] + split["steps"] + split["eval"]
        if core > 0 and cycle > (1.0 + OUTSIDE_WARNING) * core:
            logging.warning(
                "Epoch %d took %.1f s, %.1f s of them outside its training steps and validation (%s)",
                epoch + 1,
                cycle,
                cycle - core,
                ", ".join(f"{k} {v:.1f} s" for k, v in split.items()),
            )
        self._last, self._begin = end, None

    def summary(self) -> dict:
        """Totals over the epochs, for history.json."""
        totals = {part: round(sum(e[part] for e in self.epochs), 1) for part in PARTS}
        return {"totals": totals, "epochs": self.epochs}
