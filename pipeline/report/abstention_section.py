"""Abstention in the report and the model card: how often the model refuses to answer
on the evaluated split and why, what answering less buys (risk–coverage), and, when
given, the abstention benchmark's probe families (benchmarks/abstention_probes.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from btmri.intervals import wilson
from btmri.spec import REASON_LOW_CONFIDENCE, REASON_OUT_OF_DISTRIBUTION, REASON_UNCERTAIN_NO_TUMOUR
from pipeline.report.markup import Bullets, Cell, Paragraph, Table, count, rate, rate_ci


@dataclass
class RiskCoverage:
    """Accuracy of the answered images as one threshold moves (most doubtful refused first)."""

    coverage: np.ndarray  # share of images answered, ascending
    accuracy: np.ndarray  # accuracy of those answered


def risk_coverage(correct: np.ndarray, doubt: np.ndarray) -> RiskCoverage:
    """`doubt`: higher is refused first (ood_score, or minus the top probability)."""
    order = np.argsort(doubt, kind="stable")  # most trusted first
    hits = np.cumsum(correct[order].astype(float))
    answered = np.arange(1, len(order) + 1)
    return RiskCoverage(answered / len(order), hits / answered)


@dataclass
class AbstentionSummary:
    n: int
    answered: int
    out_of_distribution: int
    low_confidence: int
    uncertain_no_tumour: int  # notumor answers below their own floor
    accuracy_all: float
    accuracy_answered: float
    correct_all: int
    correct_answered: int
    by_confidence: RiskCoverage
    by_ood_score: RiskCoverage
    fitted: dict | None  # abstention.json of the evaluated model
    benchmark: dict | None  # benchmarks/abstention_probes.py --out, when given

    @property
    def acceptance(self) -> float:
        return self.answered / self.n if self.n else float("nan")


def summarize(predictions, fitted: dict | None, benchmark: dict | None = None) -> AbstentionSummary | None:
    """None for a model exported without abstention outputs."""
    p = predictions
    if p.abstain is None or not len(p.labels):
        return None
    correct = p.predicted == p.labels
    reasons = np.asarray(p.abstain_reason)
    answered = ~p.abstain
    return AbstentionSummary(
        n=len(p.labels),
        answered=int(answered.sum()),
        out_of_distribution=int((reasons == REASON_OUT_OF_DISTRIBUTION).sum()),
        low_confidence=int((reasons == REASON_LOW_CONFIDENCE).sum()),
        uncertain_no_tumour=int((reasons == REASON_UNCERTAIN_NO_TUMOUR).sum()),
        accuracy_all=float(correct.mean()),
        accuracy_answered=float(correct[answered].mean()) if answered.any() else float("nan"),
        correct_all=int(correct.sum()),
        correct_answered=int(correct[answered].sum()),
        by_confidence=risk_coverage(correct, -p.probs.max(axis=1)),
        by_ood_score=risk_coverage(correct, p.ood_score),
        fitted=fitted,
        benchmark=benchmark,
    )


def read_benchmark(path: str | None) -> dict | None:
    if not path:
        return None
    with open(path) as f:
        return json.load(f)


def plot(summary: AbstentionSummary) -> str:
    """Risk–coverage curves with the served operating point, as a data URI."""
    from pipeline.report.plots import data_uri, plt

    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    ax.plot(
        summary.by_confidence.coverage,
        summary.by_confidence.accuracy,
        lw=1.4,
        label="refusing the lowest top probability first",
    )
    ax.plot(
        summary.by_ood_score.coverage,
        summary.by_ood_score.accuracy,
        lw=1.4,
        label="refusing the highest ood_score first",
    )
    ax.scatter(
        [summary.acceptance],
        [summary.accuracy_answered],
        color="#d62728",
        zorder=3,
        label=f"served: {summary.acceptance:.3f} answered, accuracy {summary.accuracy_answered:.3f}",
    )
    ax.axhline(summary.accuracy_all, ls="--", lw=0.8, color="#777", label="answering everything")
    ax.set_xlim(0, 1.01)
    ax.set_xlabel("coverage (share of images answered)")
    ax.set_ylabel("accuracy of the answered images")
    ax.set_title("Risk–coverage on the evaluated split")
    ax.legend(loc="lower left", fontsize=7)
    fig.tight_layout()
    return data_uri(fig)


def _benchmark_table(benchmark: dict, table_id: str) -> Table:
    rows = [
        [
            Cell(family),
            Cell(str(fig["images"]), "num"),
            Cell(rate(fig["abstained"]), "num"),
            Cell(rate(fig["out_of_distribution"]), "num"),
            Cell(rate(fig["median_ood_score"], 2), "num"),
            Cell(rate(fig["median_top_probability"]), "num"),
            Cell(fig.get("source", "")),
        ]
        for family, fig in benchmark["families"].items()
    ]
    return Table(
        [
            "probe family",
            "images",
            "abstained",
            "out of distribution",
            "median ood_score",
            "median top probability",
            "source",
        ],
        rows,
        id=table_id,
        caption="benchmarks/abstention_probes.py: sources not used to fit or tune the detector",
    )


def blocks(summary: AbstentionSummary | None, split: str, table_prefix: str = "abstention") -> list:
    """Explanation and tables, shared by the report and the model card."""
    if summary is None:
        return [
            Paragraph(
                "This model was exported without abstention outputs: it answers every "
                "image, including photographs, noise and blank frames, with one of the "
                "four classes."
            )
        ]
    fitted = summary.fitted or {}
    out = [_explanation(fitted), _split_table(summary, split, table_prefix)]
    if facts := _fitted_facts(fitted):
        out.append(Bullets(facts))
    return out + _benchmark_blocks(summary.benchmark, table_prefix)


def _explanation(fitted: dict) -> Paragraph:
    return Paragraph(
        "The served model refuses to answer (`abstain`) when an image is not like the brain "
        "slices it was fitted on (`ood_score` over 1: class-conditional Mahalanobis distance of "
        f"its own pooled features; reason `{REASON_OUT_OF_DISTRIBUTION}`) or when its top "
        f"probability is below a floor (`{REASON_LOW_CONFIDENCE}`). Both thresholds were fitted "
        f"on the {fitted.get('fitted_on', 'eval split')} to answer at least "
        f"{rate(fitted.get('accept'))} of it, and are constants inside the SavedModel "
        "(`abstention.json` beside it). A `notumor` answer must also clear a higher floor of "
        f"its own (`{REASON_UNCERTAIN_NO_TUMOUR}`; P(notumor) ≥ "
        f"{fitted.get('notumor_floor', 0.0):.3f}), because calling a tumour healthy is the "
        "error that hurts most." + _floor_gave_way(fitted) + _notumor_bound(fitted)
    )


def _notumor_bound(fitted: dict) -> str:
    """The notumor answers' distance bound, for models fitted with one."""
    bound = fitted.get("notumor_ood_bound")
    if bound is None or bound >= 1.0:
        return ""
    wanted = fitted.get("notumor_ood_bound_wanted", bound)
    gave_way = (
        f" (its fit asked for {wanted:.3f}, but that alone would have refused more of the eval split "
        "than the budget allows)"
        if wanted < bound
        else ""
    )
    return (
        f" For the same reason a `notumor` answer needs an image closer to the fitted ones than "
        f"other answers do: an ood_score of at most {bound:.3f}{gave_way}. On another site's "
        "tumour slices the model's wrong `notumor` answers sit just under the distance threshold."
    )


def _split_table(summary: AbstentionSummary, split: str, table_prefix: str) -> Table:
    def share(value: float, successes: int, n: int) -> Cell:
        return Cell(rate_ci(value, wilson(successes, n)), "num")

    answered = (
        f"{count(summary.answered)} ({rate_ci(summary.acceptance, wilson(summary.answered, summary.n))})"
    )
    return Table(
        ["", f"{split}"],
        [
            [Cell("images"), Cell(count(summary.n), "num")],
            [Cell("answered"), Cell(answered, "num")],
            [Cell("abstained: out of distribution"), Cell(count(summary.out_of_distribution), "num")],
            [Cell("abstained: low confidence"), Cell(count(summary.low_confidence), "num")],
            [Cell("abstained: uncertain no tumour"), Cell(count(summary.uncertain_no_tumour), "num")],
            [Cell("accuracy, all images"), share(summary.accuracy_all, summary.correct_all, summary.n)],
            [
                Cell("accuracy, answered images"),
                share(summary.accuracy_answered, summary.correct_answered, summary.answered),
            ],
        ],
        id=f"{table_prefix}-split",
        caption="abstention on the evaluated split (95 % Wilson intervals)",
    )


def _cross_fitted_by(fitted: dict) -> str:
    """What the cross-fitted share estimates: new patients when the folds held them out."""
    by = fitted.get("cross_fitted_by", "example")
    if by == "example":
        return "cross-fitted by image, which overstates what new patients get"
    return f"cross-fitted by {by}, {fitted.get('units', '?')} units: the estimate for new patients"


def _fitted_facts(fitted: dict) -> list[str]:
    if not fitted:
        return []
    facts = [
        f"Fitted thresholds: ood_score threshold {rate(fitted.get('ood_threshold'), 3)} "
        f"on the combined distance (features: {', '.join(fitted.get('features', []))}), "
        f"top-probability floor {rate(fitted.get('confidence_floor'))}; "
        f"{rate(fitted.get('accepted_share'))} of the fitting images answered "
        f"({rate(fitted.get('accepted_share_cross_fitted'))} {_cross_fitted_by(fitted)})."
    ]
    choice = fitted.get("feature_choice", {})
    for candidate in choice.get("candidates", []):
        if "auroc" in candidate:
            kinds = ", ".join(f"{k} {rate(v, 2)}" for k, v in candidate["abstained_per_kind"].items())
            facts.append(
                f"Features {' + '.join(candidate['features'])}: AUROC {rate(candidate['auroc'])} "
                f"against the Trainer's own generated outliers (abstained: {kinds})"
                + (" — chosen." if candidate["features"] == choice.get("chosen") else ".")
            )
    return facts


def _benchmark_blocks(bench: dict | None, table_prefix: str) -> list:
    if not bench:
        return [
            Paragraph(
                "No probe benchmark given (`btmri report --abstention-benchmark FILE`, "
                "written by `benchmarks/abstention_probes.py --out FILE`): abstention on "
                "non-brain images is not shown here."
            )
        ]
    ind = bench.get("in_distribution", {})
    return [
        _benchmark_table(bench, f"{table_prefix}-probes"),
        Paragraph(
            f"Probe benchmark: AUROC of ood_score, in-distribution images against all probes "
            f"{rate(bench.get('auroc'))}; in-distribution images answered {rate(ind.get('accepted'))}, "
            f"accuracy {rate(ind.get('accuracy_accepted'), 4)} on those against "
            f"{rate(ind.get('accuracy_all'), 4)} on all ({ind.get('source', '')}). Measured on the "
            f"model at `{bench.get('model', '?')}`, which need not be the one evaluated above."
        ),
    ]


def _floor_gave_way(fitted: dict) -> str:
    """A warning sentence when the notumor floor had to be lowered to keep the budget."""
    wanted, floor = fitted.get("notumor_floor_wanted"), fitted.get("notumor_floor", 0.0)
    if wanted is None or wanted <= floor:
        return ""
    return (
        f" That floor is below the {wanted:.3f} its fit asked for: at that height it alone would "
        "have refused more of the eval split than the budget allows, because many of this "
        "model's notumor answers there are wrong and unsure. Read its notumor answers with care."
    )
