"""monitor.html: one self-contained page per `btmri monitor` run (pipeline/monitor.py).

Per feature: the served window's histogram over the baseline's (and the previous
window's), TFDV's drift and skew measurements with their thresholds (calibrated for the
window's size, pipeline/drift_calibration.py, or the schema's fixed ones), and the
anomalies; then live performance on the window's reviewed requests
(pipeline/live_performance.py). Plots are inline PNGs; no script. Every text from a log,
a review database or a path is escaped.
"""

from __future__ import annotations

import html

import numpy as np

from btmri import spec
from btmri.intervals import WILSON, format_interval
from pipeline.live_performance import ALARM
from pipeline.report.plots import data_uri, plt

SERVED, BASELINE, PREVIOUS = "#d62728", "#1f77b4", "#7f7f7f"


def _features(statistics) -> dict:
    if statistics is None or not statistics.datasets:
        return {}
    return {f.path.step[0]: f for f in statistics.datasets[0].features if f.path.step}


def _numeric(ax, feature, colour, label):
    stats = feature.num_stats
    if not stats.common_stats.num_non_missing:
        return
    histogram = next((h for h in stats.histograms if h.type == h.STANDARD), None)
    if histogram is None or not histogram.buckets:
        return
    lows = np.array([b.low_value for b in histogram.buckets])
    highs = np.array([b.high_value for b in histogram.buckets])
    counts = np.array([b.sample_count for b in histogram.buckets])
    widths = np.maximum(highs - lows, 1e-9)
    density = counts / max(counts.sum(), 1e-9) / widths
    edges = np.append(lows, highs[-1])
    ax.stairs(density, edges, color=colour, label=label, linewidth=1.6)


def _categorical(ax, features: list, colours, labels):
    values: list[str] = []
    shares = []
    for feature in features:
        s = feature.string_stats if feature is not None else None
        total = max(1, s.common_stats.num_non_missing) if s else 1
        share = {v.value: v.frequency / total for v in (s.top_values if s else [])}
        shares.append(share)
        values += [v for v in share if v not in values]
    x = np.arange(len(values))
    width = 0.8 / max(1, len(features))
    for i, (share, colour, label) in enumerate(zip(shares, colours, labels)):
        ax.bar(x + i * width, [share.get(v, 0) for v in values], width, color=colour, label=label)
    ax.set_xticks(x + width * (len(features) - 1) / 2, values, rotation=20)
    ax.set_ylabel("share")


def _plot(name: str, served, baseline, previous) -> str:
    fig, ax = plt.subplots(figsize=(4.2, 2.6))
    present = [
        (f, c, label)
        for f, c, label in (
            (served.get(name), SERVED, "served"),
            (baseline.get(name), BASELINE, "baseline"),
            (previous.get(name), PREVIOUS, "previous window"),
        )
        if f is not None
    ]
    if present and present[0][0].HasField("num_stats"):
        for feature, colour, label in present:
            _numeric(ax, feature, colour, label)
        ax.set_ylabel("density")
    else:
        _categorical(ax, [p[0] for p in present], [p[1] for p in present], [p[2] for p in present])
    ax.set_title(name)
    ax.legend(fontsize=7)
    return data_uri(fig)


def _measure(found) -> str:
    if found is None:
        return "–"
    value, threshold = found
    above = value > threshold
    return f"{'<b>' if above else ''}{value:.3f}{'</b>' if above else ''} (threshold {threshold:.3f})"


def _thresholds(result) -> str:
    """What the thresholds are: calibrated for which window, at which false-alarm rate."""
    c = result.calibration
    if c is None:
        return (
            "<p>Thresholds: the schema's fixed ones (this baseline has no stored rows to "
            "calibrate on); their false-alarm rate is unknown.</p>"
        )
    previous = f" and a previous window of {c.previous_rows} rows (drift)" if c.previous_rows else ""
    rows = result.window.get("rows")
    size = f"{c.window_rows} rows" + (
        "" if rows == c.window_rows else f" (this window's {rows}, rounded down)"
    )
    return (
        f'<p id="calibration">Thresholds calibrated for a window of {size} against a baseline of '
        f"{c.baseline_rows} rows"
        f"{previous}: {c.draws} healthy windows drawn from {c.stored_rows} stored baseline rows, "
        f"each feature's threshold set so that at most <b>{c.false_alarm_rate:g}</b> of healthy "
        f"windows raise any alarm (expected false-alarm rate, all features and checks together; "
        f"{c.in_sample_rate:.3f} of the draws did).</p>"
    )


def _number(value, digits: int = 3) -> str:
    return "–" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _live(live) -> str:
    """The "Live performance" section: each figure against what the evaluation leads to
    expect, the window's abstentions, notes and the reviewed requests' confusion."""
    e = html.escape
    if live is None:
        return ""
    head = f'<h2 id="live-performance">Live performance</h2>\n<p>{e(live.description())}.</p>'
    if live.unavailable:
        return head
    rows = []
    for c in live.checks:
        reviews = f"{c.reviewed}" + ("" if c.method == WILSON else f" (effectively {c.effective:g})")
        css = "bad" if c.status == ALARM else ""
        rows.append(
            f'<tr class="{css}"><td>{e(c.title)}</td><td>{_number(c.value)} '
            f"{e(format_interval(c.ci95))}</td><td>{e(reviews)}</td><td>{_number(c.expected)}</td>"
            f"<td>{_number(c.alarm_below)}</td><td>{e(c.status)}</td></tr>"
        )
    calibration = (
        f"<p>Bounds calibrated so that at most <b>{live.false_alarm_rate:g}</b> of healthy windows "
        f"with these reviews raise any live-performance alarm ({live.draws} draws; "
        f"{live.in_sample_rate:.3f} of them did). Figures worth fewer than {live.min_reviews} "
        "effective reviews are not checked.</p>"
        if live.in_sample_rate is not None
        else "<p>No figure checked.</p>"
    )
    abstained = ""
    if live.abstained is not None:
        expected = "" if live.expected is None else f"; the evaluation: {live.expected.abstained:.3f}"
        abstained = (
            f"<p>Abstained in the window: {_number(live.abstained['value'])} "
            f"{e(format_interval(live.abstained['ci95']))} ({live.window_abstained} of "
            f"{live.window_rows}){e(expected)}; among the reviewed requests: "
            f"{live.reviewed_abstained} of {live.reviewed}.</p>"
        )
    notes = "".join(f"<li>{e(n)}</li>" for n in live.notes)
    confusion = ""
    if live.reviewed_figures:
        matrix = live.reviewed_figures["confusion"]
        header = "".join(f"<th>{e(c)}</th>" for c in matrix["columns"])
        body = "".join(
            f"<tr><th>{e(name)}</th>" + "".join(f"<td>{k}</td>" for k in counts) + "</tr>"
            for name, counts in zip(matrix["rows"], matrix["counts"])
        )
        confusion = (
            "<p>The reviewed requests themselves, unweighted (rows: the reviewer's class; "
            f'columns: the model\'s answer):</p><table id="live-confusion"><tr><th></th>{header}</tr>'
            f"{body}</table>"
        )
    return f"""{head}
<p>Accuracy and per-class recall as <code>btmri evaluate</code> counts them (an abstention is
not a right answer), estimated for the whole window: each reviewed request stands for the
window's unreviewed requests of its kind (answered or abstained). Expected: {e(live.expected_text())};
accuracy's at this window's class mix.</p>
{calibration}
<table id="live"><tr><th>figure</th><th>live [95 % interval]</th><th>reviewed requests</th>
<th>expected</th><th>alarm below</th><th>status</th></tr>
{"".join(rows)}</table>
{abstained}
<ul>{notes}</ul>
{confusion}"""


def render(result, served, baseline, previous) -> str:
    e = html.escape
    served_f, baseline_f, previous_f = _features(served), _features(baseline), _features(previous)
    measured = result.measurements()
    window = result.window
    rows = []
    for name in spec.REQUEST_FEATURES:
        info = result.anomalies.anomaly_info.get(name)
        reasons = "<br>".join(e(r.description) for r in info.reason) if info else "none"
        m = measured.get(name, {})
        rows.append(
            f"<tr><td>{e(name)}</td><td>{_measure(m.get('skew'))}</td>"
            f"<td>{_measure(m.get('drift'))}</td>"
            f'<td class="{"bad" if info else "ok"}">{reasons}</td></tr>'
        )
    plots = "".join(
        f'<img alt="{e(name)}" src="{_plot(name, served_f, baseline_f, previous_f)}">'
        for name in spec.REQUEST_FEATURES
        if name in served_f or name in baseline_f
    )
    verdict = (
        '<p class="bad">Anomalies: see the table.</p>'
        if result.anomalous
        else '<p class="ok">No anomaly: served traffic matches the baseline'
        + (" and the previous window" if result.drift_against else "")
        + ".</p>"
    )
    if result.live is not None and result.live.alarms:
        verdict += (
            '<p class="bad">Live-performance alarm: '
            + e("; ".join(c.title for c in result.live.alarms))
            + ' (<a href="#live-performance">below</a>).</p>'
        )
    notes = "".join(f"<li>{e(n)}</li>" for n in result.notes)
    calibration = result.calibration
    facts = [
        ("window size (rows, images)", window.get("rows")),
        ("records (calls)", window.get("records")),
        ("model versions", window.get("versions")),
        ("payloads", window.get("payloads")),
        ("first / last record (UTC s)", f"{window.get('first')} / {window.get('last')}"),
        ("files", len(window.get("files", [])) + len(window.get("open_files", {}))),
        ("of which still being written", len(window.get("open_files", {}))),
        ("baseline statistics", window.get("baseline_statistics")),
        ("baseline rows", window.get("baseline_rows")),
        (
            "expected false-alarm rate",
            f"{calibration.false_alarm_rate:g} (calibrated)" if calibration else "unknown (fixed thresholds)",
        ),
        ("baseline of served version", window.get("baseline_version") or "none matched: the latest run's"),
        ("schema (comparators)", window.get("schema")),
        ("previous window (drift)", result.drift_against or "none: first report"),
    ]
    fact_rows = "".join(f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in facts)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Request monitoring</title>
<style>
body {{ font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222 }}
table {{ border-collapse: collapse; margin: 1em 0 }} td, th {{ border: 1px solid #ccc; padding: 4px 8px;
  vertical-align: top; text-align: left }} .bad {{ color: #b00020 }} .ok {{ color: #1b7f3a }}
img {{ margin: 4px }}
</style></head><body>
<h1>Request monitoring</h1>
{verdict}
<ul>{notes}</ul>
<table id="window">{fact_rows}</table>
<h2>Skew (against the baseline) and drift (against the previous window)</h2>
<p>TFDV: approximate Jensen–Shannon divergence for numeric features, L-infinity distance for
categorical ones. Bold: above its threshold.</p>
{_thresholds(result)}
<table id="anomalies"><tr><th>feature</th><th>skew</th><th>drift</th><th>anomalies</th></tr>
{"".join(rows)}</table>
{_live(result.live)}
<h2>Served ({SERVED}) against the baseline ({BASELINE}) and the previous window</h2>
<div>{plots}</div>
</body></html>
"""
