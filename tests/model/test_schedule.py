"""The training schedules: when the anneal starts, how the rate falls, when training stops."""

from __future__ import annotations

import numpy as np
import pytest

from components.training.schedule import ConvergencePlan, ScheduleCallback, cosine_decay


def run_plan(plan: ConvergencePlan, losses) -> tuple[int, list[float]]:
    """Feeds eval losses until the plan is done: (epochs run, the rate of each)."""
    rates = []
    for epoch, loss in enumerate(losses):
        rates.append(plan.learning_rate(epoch))
        plan.observe(loss)
        if plan.done(epoch + 1):
            return epoch + 1, rates
    return len(losses), rates


def test_a_flat_eval_loss_starts_the_anneal_and_training_stops_at_its_end():
    improving = [1.0 * 0.9**i for i in range(12)]
    flat = [improving[-1]] * 100
    plan = ConvergencePlan(base_lr=1e-3, max_epochs=80, patience=5, min_epochs=10)
    epochs, rates = run_plan(plan, improving + flat)
    # 12 improving epochs; the median of three still improves on the 13th; 5 more
    # without a better median: the anneal starts after 18, lasts ceil(18 / 2) = 9
    # epochs; 27 in all, far short of the 80 allowed.
    assert plan.anneal_start == 18 and plan.tail == 9 and epochs == 27
    assert rates[:18] == [1e-3] * 18
    tail = rates[18:]
    assert all(a > b for a, b in zip(tail, tail[1:])) and 0 < tail[-1] < 0.05e-3
    assert "flat for 5 epochs" in plan.summary()["reason"]
    assert plan.summary()["anneal_start_epoch"] == 19


def test_one_spike_of_the_eval_loss_neither_resets_nor_counts_as_progress():
    losses = [1.0, 0.8, 0.6, 0.5, 0.45, 0.42, 0.4, 0.38, 0.36, 0.35] + [0.35] * 30
    spiked = list(losses)
    spiked[12] = 2.6  # the real set's eval loss jumped like this at a high rate
    quiet, noisy = ConvergencePlan(1e-3, 80, patience=6), ConvergencePlan(1e-3, 80, patience=6)
    assert run_plan(quiet, losses)[0] == run_plan(noisy, spiked)[0]
    assert quiet.anneal_start == noisy.anneal_start


def test_a_loss_that_keeps_falling_anneals_so_as_to_end_at_the_epoch_limit():
    plan = ConvergencePlan(base_lr=1e-3, max_epochs=30, patience=4)
    epochs, rates = run_plan(plan, [1.0 * 0.95**i for i in range(100)])
    assert epochs == 30
    assert plan.anneal_start + plan.tail == 30
    assert "end by epoch 30" in plan.reason
    assert rates[plan.anneal_start - 1] == 1e-3 > rates[plan.anneal_start]


def test_no_anneal_before_the_minimum_epochs_even_on_a_flat_start():
    plan = ConvergencePlan(base_lr=1e-3, max_epochs=80, patience=2, min_epochs=10)
    run_plan(plan, [0.5] * 100)
    assert plan.anneal_start == 10


def test_tiny_runs_stop_at_their_epoch_limit():
    for limit in (1, 2, 3):
        plan = ConvergencePlan(base_lr=1e-3, max_epochs=limit, patience=8)
        assert run_plan(plan, [1.0] * 10)[0] == limit


def test_the_plan_refuses_a_schedule_without_epochs_or_patience():
    with pytest.raises(ValueError, match="patience must be >= 1"):
        ConvergencePlan(1e-3, max_epochs=10, patience=0)
    with pytest.raises(ValueError, match="schedule must be one of"):
        ScheduleCallback("linear", 1e-3, 10, 4)


def test_cosine_decays_from_the_base_rate_to_zero():
    rates = [cosine_decay(1e-3, step, 10) for step in range(11)]
    assert rates[0] == pytest.approx(1e-3) and rates[10] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(rates) < 0)
    assert rates[5] == pytest.approx(0.5e-3)


def test_the_keras_callback_sets_the_rate_and_stops_fit():
    import tensorflow as tf
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Dense(1, input_shape=(1,))])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    x = tf.zeros([8, 1])  # nothing to learn: the eval loss is flat from the start
    callback = ScheduleCallback("converge", 1e-2, max_epochs=50, patience=1)
    callback.plan.min_epochs = 2
    history = model.fit(x, x, validation_data=(x, x), epochs=50, verbose=0, callbacks=[callback])
    epochs = len(history.history["loss"])
    # Flat after the first epoch: the anneal starts after 2 and lasts the minimum 4.
    assert epochs == 6
    assert history.history["lr"][:2] == [1e-2, 1e-2]
    assert history.history["lr"][-1] < history.history["lr"][2] < 1e-2
    assert callback.summary()["epochs_run"] == 6


def test_full_size_is_the_anneals_last_share_and_the_last_epoch_at_the_latest():
    callback = ScheduleCallback("converge", 1e-3, max_epochs=50, patience=8, full_size_share=0.5)
    assert callback.full_size_from() == 49  # no anneal yet: the last epoch at the latest
    callback.plan.anneal_start, callback.plan.tail = 30, 12
    assert callback.full_size_from() == 36  # the last 6 of the anneal's epochs 30-41
    callback.plan.tail = 3
    assert callback.full_size_from() == 31  # 1.5 rounds up to 2
    whole = ScheduleCallback("converge", 1e-3, max_epochs=50, patience=8, full_size_share=1.0)
    whole.plan.anneal_start, whole.plan.tail = 30, 12
    assert whole.full_size_from() == 30
    assert ScheduleCallback("converge", 1e-3, max_epochs=1, patience=8).full_size_from() == 0
    # Cosine: the share of its last third, at least one epoch.
    cosine = ScheduleCallback("cosine", 1e-3, max_epochs=30, patience=8)
    assert cosine.full_size_from() == 20
    cosine.full_size_share = 0.5
    assert cosine.full_size_from() == 25
    cosine.max_epochs, cosine.full_size_share = 2, 0.1
    assert cosine.full_size_from() == 1
    with pytest.raises(ValueError, match=r"full_size_share must be in \(0, 1\]"):
        ScheduleCallback("cosine", 1e-3, max_epochs=2, patience=8, full_size_share=0)
