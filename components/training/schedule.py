"""Learning-rate schedules and when training stops.

`converge` (the default): the base rate while the eval loss still improves; once it
has not improved for `patience` epochs, the rate anneals to zero along a half cosine
over a tail of half as many epochs again as were run, and training stops at its end.
The model exported is the end of that anneal, never the epoch that scored best on
eval (which would flatter the eval figures). A constant rate and then a short decay
trains as well as one long cosine (warmup-stable-decay schedules); the decay settles
the weights and batch-norm statistics. Data that converges fast (the synthetic
phantoms) stops early; data that keeps improving trains up to `epochs`: the anneal
starts late enough to end there at the latest.

`cosine`: one cosine decay over all `epochs`, no stopping.

The Trainer may train on smaller images for all but the last epochs
(`TrainerConfig.base_phase_size`, `full_size_share`): `ScheduleCallback.full_size_from`
says from which epoch the images are full size (the last `full_size_share` of the anneal,
or of a cosine schedule's last third; the last epoch at the latest), and
`stop_at_full_size` ends a `fit` there so the Trainer can continue at full size.

The eval loss of a small network on the real set jumps at high rates (0.45 to 2.57
and back in one epoch), so the plan tracks the median of the last three epochs.
`ConvergencePlan` is plain Python (tested without TensorFlow); `ScheduleCallback`
drives Keras with it.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

import tf_keras as keras

from btmri.spec import SCHEDULE_ANNEAL_LINE, SCHEDULE_CONVERGE, SCHEDULE_COSINE, SCHEDULES

SMOOTHING_EPOCHS = 3  # the eval loss compared is the median of this many epochs
MIN_EPOCHS = 24  # no anneal before this many epochs at the base rate
MIN_DELTA = 0.02  # relative: a smoothed eval loss 2 % below the best so far is better
# The anneal lasts this share of the epochs run before it. On the real set the eval loss
# of a 34-epoch anneal stopped falling after its first 8 (docs/experiments.md).
TAIL_SHARE = 0.5
MIN_TAIL = 4
# Under the cosine schedule the last third counts as the anneal (full-size images).
COSINE_FULL_SIZE_SHARE = 1 / 3


def cosine_decay(base_lr: float, step: float, steps: float) -> float:
    """Half a cosine from base_lr (step 0) to 0 (step `steps`)."""
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(step, steps) / max(steps, 1)))


@dataclass
class ConvergencePlan:
    """The `converge` schedule's state: feed it each epoch's eval loss (`observe`),
    ask it each epoch's rate (`learning_rate`) and whether to stop (`done`).
    Epochs count from 0; `anneal_start` is the first epoch of the decay."""

    base_lr: float
    max_epochs: int
    patience: int
    min_epochs: int = MIN_EPOCHS
    min_delta: float = MIN_DELTA
    tail_share: float = TAIL_SHARE
    min_tail: int = MIN_TAIL
    anneal_start: int | None = None
    tail: int = 0
    reason: str = ""
    losses: list[float] = field(default_factory=list)
    _best: float = field(default=math.inf, init=False)
    _since_best: int = field(default=0, init=False)

    def __post_init__(self):
        if self.max_epochs < 1 or self.patience < 1:
            raise ValueError(f"epochs and patience must be >= 1, got {self.max_epochs} and {self.patience}")

    def _tail_after(self, epochs_run: int) -> int:
        return max(self.min_tail, math.ceil(self.tail_share * epochs_run))

    def learning_rate(self, epoch: int) -> float:
        if self.anneal_start is None or epoch < self.anneal_start:
            return self.base_lr
        # The last epoch of the tail still learns a little; the step after it would be 0.
        return cosine_decay(self.base_lr, epoch - self.anneal_start + 1, self.tail + 1)

    def observe(self, eval_loss: float) -> None:
        """After each epoch: its eval loss. Starts the anneal when the smoothed loss
        has stalled, or when waiting longer would run past max_epochs."""
        self.losses.append(float(eval_loss))
        smoothed = statistics.median(self.losses[-SMOOTHING_EPOCHS:])
        if smoothed < self._best * (1.0 - self.min_delta):
            self._best, self._since_best = smoothed, 0
        else:
            self._since_best += 1
        if self.anneal_start is not None:
            return
        run = len(self.losses)
        if run >= self.min_epochs and self._since_best >= self.patience:
            self._start(run, self._tail_after(run), f"eval loss flat for {self._since_best} epochs")
        elif run + self._tail_after(run) >= self.max_epochs:
            self._start(run, max(1, self.max_epochs - run), f"anneal so as to end by epoch {self.max_epochs}")

    def _start(self, epoch: int, tail: int, reason: str) -> None:
        self.anneal_start, self.tail, self.reason = epoch, min(tail, self.max_epochs - epoch), reason

    def done(self, epochs_run: int) -> bool:
        if epochs_run >= self.max_epochs:
            return True
        return self.anneal_start is not None and epochs_run >= self.anneal_start + self.tail

    def summary(self) -> dict:
        """What history.json records of the schedule."""
        return {
            "schedule": SCHEDULE_CONVERGE,
            "epochs_run": len(self.losses),
            "anneal_start_epoch": None if self.anneal_start is None else self.anneal_start + 1,
            "anneal_epochs": self.tail,
            "reason": self.reason,
        }


class ScheduleCallback(keras.callbacks.Callback):
    """Sets each epoch's learning rate and stops training when the schedule is done."""

    def __init__(
        self, schedule: str, base_lr: float, max_epochs: int, patience: int, full_size_share: float = 1.0
    ):
        super().__init__()
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
        if not 0.0 < full_size_share <= 1.0:
            raise ValueError(f"full_size_share must be in (0, 1], got {full_size_share}")
        self.base_lr, self.max_epochs, self.full_size_share = base_lr, max_epochs, full_size_share
        self.plan = ConvergencePlan(base_lr, max_epochs, patience) if schedule == SCHEDULE_CONVERGE else None
        self.stop_at_full_size = False  # end this fit where full_size_from() begins

    def full_size_from(self) -> int:
        """The first epoch (from 0) that trains on full-size images, as far as it is known
        now: the last `full_size_share` of the anneal (converge: until the anneal starts,
        the last epoch; cosine: of its last third), at least one epoch, so the weights
        exported have trained at the size they serve at."""
        if self.plan is None:
            length = math.ceil(COSINE_FULL_SIZE_SHARE * self.max_epochs)
            start = self.max_epochs - length
        elif self.plan.anneal_start is None:
            return self.max_epochs - 1
        else:
            start, length = self.plan.anneal_start, self.plan.tail
        full = max(1, math.ceil(self.full_size_share * length))
        return min(self.max_epochs - 1, start + max(0, length - full))

    def _rate(self, epoch: int) -> float:
        if self.plan is None:
            return cosine_decay(self.base_lr, epoch, self.max_epochs)
        return self.plan.learning_rate(epoch)

    def on_epoch_begin(self, epoch, logs=None):
        keras.backend.set_value(self.model.optimizer.learning_rate, self._rate(epoch))

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        logs["lr"] = self._rate(epoch)
        if self.plan is None:
            self._stop_for_full_size(epoch)
            return
        if "val_loss" not in logs:
            raise ValueError("the converge schedule needs an eval loss every epoch")
        annealing = self.plan.anneal_start is not None
        self.plan.observe(logs["val_loss"])
        if not annealing and self.plan.anneal_start is not None and not self.plan.done(epoch + 1):
            first = self.plan.anneal_start + 1
            line = SCHEDULE_ANNEAL_LINE.format(
                first=first, last=first + self.plan.tail - 1, reason=self.plan.reason
            )
            print(line, flush=True)  # beside Keras' epoch lines: the run's progress line reads it
        if self.plan.done(epoch + 1):
            self.model.stop_training = True
        self._stop_for_full_size(epoch)

    def _stop_for_full_size(self, epoch: int) -> None:
        if self.stop_at_full_size and epoch + 1 >= self.full_size_from():
            self.model.stop_training = True

    def summary(self) -> dict:
        if self.plan is None:
            return {"schedule": SCHEDULE_COSINE, "epochs_run": None}
        return self.plan.summary()
