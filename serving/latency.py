"""Request latency figures, as the InfraValidator records them and the serving
benchmarks print them."""

from __future__ import annotations

import statistics


def p50_p99_ms(seconds: list[float]) -> tuple[float, float]:
    """(median, p99) of request times given in seconds, in milliseconds. The p99 is the
    sorted time at index floor(0.99 n): the slowest one for 100 requests or fewer."""
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return 1000 * statistics.median(ordered), 1000 * p99
