"""EpochClock: every second of an epoch's cycle lands in one named part."""

from __future__ import annotations

import logging

from components.training.epoch_clock import PARTS, EpochClock


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run_epoch(clock: EpochClock, time: FakeClock, epoch: int, start: float, marks: dict) -> None:
    """Drives the hooks Keras calls in one epoch at the given times (offsets from start)."""
    time.now = start
    clock.on_epoch_begin(epoch)
    for offset in marks["batches"]:
        time.now = start + offset
        clock.on_train_batch_end(0)
    time.now = start + marks["test"][0]
    clock.on_test_begin()
    time.now = start + marks["test"][1]
    clock.on_test_end()
    time.now = start + marks["end"]
    clock.on_epoch_end(epoch)


def test_an_epochs_cycle_splits_into_its_parts_and_a_stall_between_epochs_is_reported(caplog):
    time = FakeClock()
    clock = EpochClock(clock=time)
    time.now = 0.0
    clock.on_train_begin()
    marks = {"batches": [0.2, 1.0, 9.0], "test": (9.0, 11.0), "end": 11.5}
    run_epoch(clock, time, 0, start=0.5, marks=marks)
    with caplog.at_level(logging.WARNING):
        run_epoch(clock, time, 1, start=12.0 + 40.0, marks=marks)  # 40 s lost between epochs

    first, second = clock.epochs
    assert first == {"before": 0.5, "first": 0.2, "steps": 8.8, "eval": 2.0, "after": 0.5}
    assert second["before"] == 40.0 and second["steps"] == 8.8
    # Nothing of the wall time between the first epoch's end and the second's is lost.
    assert sum(first.values()) + sum(second.values()) == time.now
    assert "Epoch 2 took 51.5 s, 40.5 s of them outside" in caplog.text
    assert "Epoch 1 " not in caplog.text  # 1.0 s between epochs against 11 s: under the warning's share
    totals = clock.summary()["totals"]
    assert set(totals) == set(PARTS) and totals["before"] == 40.5


def test_an_evaluate_call_outside_fit_is_not_taken_for_the_validation_pass():
    time = FakeClock()
    clock = EpochClock(clock=time)
    clock.on_train_begin()
    time.now = 5.0
    clock.on_test_begin()  # e.g. a callback evaluating between epochs
    run_epoch(clock, time, 0, start=6.0, marks={"batches": [1.0], "test": (4.0, 5.0), "end": 5.0})
    assert clock.epochs[0]["eval"] == 1.0 and clock.epochs[0]["before"] == 6.0
