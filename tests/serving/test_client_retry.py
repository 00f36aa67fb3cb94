"""The clients' retries stay inside --timeout: an unreachable server fails within it."""

from __future__ import annotations

import time

import pytest

from serving.client import RestClient, RetryPolicy, ServerUnavailable, unavailable_message
from serving.process import free_ports


def test_attempts_stop_when_the_next_backoff_would_pass_the_timeout():
    started = time.monotonic()
    budgets = list(RetryPolicy().attempts_within(1.0))
    # Attempts at 0, 0.25 and 0.75 s; the next sleep (1 s) would end after the timeout.
    assert len(budgets) == 3
    assert budgets[0] == pytest.approx(1.0, abs=0.05) and budgets[-1] == pytest.approx(0.25, abs=0.05)
    assert time.monotonic() - started < 1.0
    assert len(list(RetryPolicy(attempts=3).attempts_within(30.0))) == 3  # attempts bound too


def test_a_rest_client_without_a_server_fails_within_its_timeout():
    (port,) = free_ports(1)
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match="unavailable \\(3 attempts") as caught:
        RestClient(f"127.0.0.1:{port}", timeout=1.0).request("GET", "/v1/models/x")
    assert time.monotonic() - started < 1.5
    text = unavailable_message("btmri predict", caught.value)
    assert text.startswith("btmri predict: error: the model server at") and "btmri serve" in text
