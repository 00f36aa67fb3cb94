"""Prometheus metrics in the text exposition format, standard library only.

Request count and latency use TF Serving's metric names (as its Prometheus
exporter spells them), so one dashboard reads either server:
  :tensorflow:serving:request_count{model_name,status}
  :tensorflow:serving:request_latency{model_name,API,entrypoint}  (microseconds)
The official server has no metric for the loaded version; this one adds
  btmri_serving_loaded_version{model_name}   (0 while nothing is loaded)
  btmri_serving_batch_size                   (rows per batched model call)
and, with a request log (serving/request_log.py),
  btmri_serving_request_log_written_total    (records written)
  btmri_serving_request_log_dropped_total{reason}  (queue_full, too_large, error)
"""

from __future__ import annotations

import bisect
import threading


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    def escape(v: str) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    parts = [f'{n}="{escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _number(value: float) -> str:
    """Exact integers stay integers (a version number must not become 1.79571e+09)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: tuple[str, ...]):
        self.name = name
        self.help = help_text
        self.label_names = label_names
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args):
        super().__init__(*args)
        self._values: dict[tuple, float] = {}

    def inc(self, *labels: str, amount: float = 1) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0) + amount

    def value_count(self) -> int:
        with self._lock:
            return len(self._values)

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_labels(self.label_names, k)} {_number(v)}" for k, v in items]


class Gauge(Counter):
    kind = "gauge"

    def set(self, *labels: str, value: float) -> None:
        with self._lock:
            self._values[labels] = value


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, label_names: tuple[str, ...], buckets: list[float]):
        super().__init__(name, help_text, label_names)
        self.buckets = sorted(buckets)
        self._series: dict[tuple, list] = {}  # labels → [bucket counts..., sum, count]

    def observe(self, value: float, *labels: str) -> None:
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.setdefault(labels, [0] * (len(self.buckets) + 1) + [0.0, 0])
            series[index] += 1
            series[-2] += value
            series[-1] += 1

    def render(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        lines = self.header()
        for labels, series in items:
            cumulative = 0
            for bound, count in zip(self.buckets + [float("inf")], series):
                cumulative += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                bucket_labels = _labels(self.label_names, labels, 'le="' + le + '"')
                lines.append(f"{self.name}_bucket{bucket_labels} {cumulative}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_number(series[-2])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {series[-1]}")
        return lines


def exponential_buckets(scale: float, growth: float, count: int) -> list[float]:
    return [scale * growth**i for i in range(count)]


class ServingMetrics:
    """The metrics one model server exports."""

    def __init__(self, model_names: str | tuple[str, ...]):
        self.model_names = (model_names,) if isinstance(model_names, str) else tuple(model_names)
        self.request_count = Counter(
            ":tensorflow:serving:request_count", "The total number of requests.", ("model_name", "status")
        )
        # TF Serving's buckets: scale 10 µs, growth 1.8, 33 buckets (~20 minutes).
        self.request_latency = Histogram(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            ("model_name", "API", "entrypoint"),
            exponential_buckets(10, 1.8, 33),
        )
        self.batch_size = Histogram(
            "btmri_serving_batch_size",
            "Rows per model call formed by server-side batching.",
            (),
            [1, 2, 4, 8, 16, 32, 64, 128],
        )
        self.loaded_version = Gauge(
            "btmri_serving_loaded_version",
            "Version of the model that takes requests (0: none loaded).",
            ("model_name",),
        )
        self.request_log_written = Counter(
            "btmri_serving_request_log_written_total", "Requests written to the request log.", ()
        )
        self.request_log_dropped = Counter(
            "btmri_serving_request_log_dropped_total",
            "Sampled requests the request log dropped (queue full, too large, write error).",
            ("reason",),
        )

    def record(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        # Names come from requests: arbitrary ones must not grow the label sets without bound.
        if model_name not in self.model_names:
            model_name = "_unknown_model_" if model_name else ""
        self.request_count.inc(model_name, status)
        self.request_latency.observe(seconds * 1e6, model_name, api, entrypoint)

    def render(self) -> str:
        lines = []
        metrics = [self.request_count, self.request_latency, self.batch_size, self.loaded_version]
        if self.request_log_written.value_count():  # request logging is on (RequestLog sets 0)
            metrics += [self.request_log_written, self.request_log_dropped]
        for metric in metrics:
            lines += metric.render()
        return "\n".join(lines) + "\n"
