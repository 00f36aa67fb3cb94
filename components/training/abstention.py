"""Knowing when not to answer: an out-of-distribution score and a confidence floor,
fitted on held-out data and computed inside the exported SavedModel.

The score is the network's own: class-conditional Mahalanobis distance (one shared
covariance per feature set, Ledoit-Wolf shrinkage) of pooled features. Which features
is chosen per model by the Trainer (`choose`), among the pooled features the logits
read alone, those plus the Grad-CAM map pooled to 2x2 (layout), or the globally pooled
fine, Grad-CAM and last maps: the set whose score best separates the Trainer's own
generated outliers (outliers.py) from cross-fitted eval slices. A photograph, noise
or a blank frame lands far from every class mean even where the last layer maps it
confidently onto a class. Each feature's distance is divided by its median on
held-out brain slices, the largest is the image's distance, and `ood_score` is that
divided by the threshold, so

    ood_score > 1                                  -> abstain, "out_of_distribution"
    else top (calibrated) probability < floor      -> abstain, "low_confidence"
    else top class notumor, and P(notumor) < its floor
         or ood_score > notumor_ood_bound          -> abstain, "uncertain_no_tumour"
    else                                           -> answer ("")

The third rule is asymmetric on purpose: a tumour called healthy is the failure that
hurts most, and on scans from other sites the network's mistakes are mostly that
(tumours it cannot read come out `notumor`). "No tumour" is a claim of absence, so it
needs more than a tumour class: a higher probability, and an image closer to the ones
it was fitted on (on another site's tumour slices the wrong `notumor` answers sit just
under the distance threshold; docs/experiments.md). Its floor refuses a share
`notumor_refuse` of the eval split's right notumor answers, its distance bound a share
`notumor_ood_refuse` of them (cross-fitted); the confidence floor is then fitted to the
rest of the budget, so `accept` holds for all the rules together.

Fitting (`fit`) uses the eval split, which never trains the weights (the Trainer
fits the temperature on it too). The threshold of the score is chosen on
cross-fitted distances (each eval image scored by statistics fitted without it),
so it is not flattered by in-sample distances: a share `ood_share` of the rejection
budget (1 - `accept`, default 0.05) goes to the distance (the threshold and the
notumor bound together: the threshold moves out to pay for the bound), the rest to
the floors, chosen so that at least `accept` of the eval images are answered both in
sample (what the graph does on them) and cross-fitted (the estimate for new images).

The fitted numbers go into the graph as constants (`outputs`) and into
abstention.json beside saved_model.pb (`write`); the serving signatures return
`ood_score`, `abstain` and `abstain_reason` next to the usual outputs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from btmri.documents import TRAINER_DEFAULTS
from btmri.layout import ABSTENTION_FILE
from btmri.spec import (
    ABSTAIN,
    ABSTAIN_REASON,
    NOTUMOR_ID,
    OOD_SCORE,
    REASON_LOW_CONFIDENCE,
    REASON_OUT_OF_DISTRIBUTION,
    REASON_UNCERTAIN_NO_TUMOUR,
)

DEFAULT_FOLDS = 5
EIGEN_FLOOR = 1e-6  # relative to the largest eigenvalue of a shrunk covariance
# The graph computes in float32 what `fit` computes in float64; an image exactly at
# a threshold must not flip, or the eval acceptance could drop by one image.
_MARGIN = 1e-4


@dataclass
class LayerStats:
    """Whitening of one pooled feature map and the class means in whitened space."""

    name: str
    whitening: np.ndarray  # [d, d]: z = f @ whitening has identity covariance
    means: np.ndarray  # [K, d]: whitened class means (classes seen in the fit)
    scale: float = 1.0  # median cross-fitted distance on held-out brain slices

    def distances(self, features: np.ndarray) -> np.ndarray:
        """[N, d] → [N]: sqrt(min over classes of squared distance / d) / scale."""
        z = features.astype(np.float64) @ self.whitening
        d2 = ((z[:, None, :] - self.means[None]) ** 2).sum(-1).min(axis=1)
        return np.sqrt(d2 / z.shape[1]) / self.scale


@dataclass
class AbstentionSpec:
    layers: list[LayerStats]
    ood_threshold: float  # on the combined distance; ood_score = combined / this
    confidence_floor: float  # top probability below this: low_confidence
    accept: float
    ood_share: float
    fit_report: dict = field(default_factory=dict)
    cross_fitted_scores: np.ndarray | None = None  # ood_score of each fitting example, cross-fitted
    notumor_floor: float = 0.0  # top class notumor with P(notumor) below this: uncertain_no_tumour
    notumor_ood_bound: float = 1.0  # top class notumor with ood_score above this: uncertain_no_tumour

    @property
    def features(self) -> list[str]:
        return [layer.name for layer in self.layers]

    def combined(self, features: list[np.ndarray]) -> np.ndarray:
        return np.max([layer.distances(f) for layer, f in zip(self.layers, features)], axis=0)

    def ood_scores(self, features: list[np.ndarray]) -> np.ndarray:
        return self.combined(features) / self.ood_threshold

    def decide(self, probabilities: np.ndarray, features: list[np.ndarray]):
        """The graph's decision in NumPy: (ood_score, abstain, reason) per image."""
        score = self.ood_scores(features)
        out = ~(score <= 1.0)
        low = ~out & (probabilities.max(axis=1) < self.confidence_floor)
        unsure = (
            ~out
            & ~low
            & (
                _uncertain_notumor(probabilities, self.notumor_floor)
                | _unfamiliar_notumor(probabilities, score, self.notumor_ood_bound)
            )
        )
        reason = np.where(
            out,
            REASON_OUT_OF_DISTRIBUTION,
            np.where(low, REASON_LOW_CONFIDENCE, np.where(unsure, REASON_UNCERTAIN_NO_TUMOUR, "")),
        )
        return score, out | low | unsure, reason

    def to_json(self) -> dict:
        return {
            "method": "class-conditional Mahalanobis distance, shared Ledoit-Wolf covariance per "
            "layer, on globally average-pooled features; per-layer distance divided by "
            "its cross-fitted median on the fitting split; the largest over layers, "
            "divided by the threshold, is ood_score (> 1: out_of_distribution); then "
            "top probability < confidence_floor: low_confidence; then top class notumor with "
            "P(notumor) < notumor_floor or ood_score > notumor_ood_bound: uncertain_no_tumour",
            "accept": self.accept,
            "ood_share": self.ood_share,
            "ood_threshold": self.ood_threshold,
            "confidence_floor": self.confidence_floor,
            "notumor_floor": self.notumor_floor,
            "notumor_ood_bound": self.notumor_ood_bound,
            "features": [layer.name for layer in self.layers],
            "layers": [
                {
                    "name": layer.name,
                    "dims": int(layer.whitening.shape[0]),
                    "classes": int(layer.means.shape[0]),
                    "scale": layer.scale,
                }
                for layer in self.layers
            ],
            **self.fit_report,
        }


# ---- fitting -------------------------------------------------------------------------


def _uncertain_notumor(probabilities: np.ndarray, floor: float) -> np.ndarray:
    return (probabilities.argmax(axis=1) == NOTUMOR_ID) & (probabilities[:, NOTUMOR_ID] < floor)


def _unfamiliar_notumor(probabilities: np.ndarray, score: np.ndarray, bound: float) -> np.ndarray:
    return (probabilities.argmax(axis=1) == NOTUMOR_ID) & (score > bound)


def notumor_ood_bound_for(
    probabilities: np.ndarray, labels: np.ndarray, distances: tuple[np.ndarray, ...], passes, refuse: float
) -> float:
    """The combined distance above which a notumor answer is refused: the higher, over
    `distances` (in sample, cross-fitted), of the one that refuses `refuse` of the right
    notumor answers the threshold lets through; inf (no refusal) with none, or refuse 0."""
    right = (probabilities.argmax(axis=1) == NOTUMOR_ID) & (labels == NOTUMOR_ID)
    bounds = [
        _order_statistic(d[right & ok], 1.0 - refuse) * (1 + _MARGIN)
        for d, ok in zip(distances, passes)
        if (right & ok).any()
    ]
    return max(bounds) if refuse > 0 and bounds else math.inf


def _distance_passes(probabilities, distances, threshold: float, bound: float) -> list[np.ndarray]:
    """Per distance (in sample, cross-fitted): passes the threshold, and the bound if notumor."""
    return [(d <= threshold) & ~_unfamiliar_notumor(probabilities, d, bound) for d in distances]


def _distance_keeps(probabilities, distances, threshold: float, bound: float, needed: int) -> bool:
    """Whether the two distance rules pass at least `needed` examples in every distance."""
    return all(int(ok.sum()) >= needed for ok in _distance_passes(probabilities, distances, threshold, bound))


def _paying_threshold(
    probabilities, distances, threshold: float, loosest: float, bound: float, needed: int
) -> float:
    """The lowest threshold from `threshold` to `loosest` at which the two distance rules
    together still pass `needed` examples in every distance; `loosest` if none does."""
    values = np.concatenate(distances)
    candidates = np.unique(values[(values > threshold) & (values < loosest)]) * (1 + _MARGIN)
    for t in [threshold, *candidates.tolist()]:
        if _distance_keeps(probabilities, distances, t, bound, needed):
            return float(t)
    return loosest


def _bound_within_budget(probabilities, bound: float, distances, threshold: float, needed: int) -> float:
    """`bound`, raised just enough that the two distance rules together pass `needed`
    examples in every distance (inf: no bound at all)."""
    while math.isfinite(bound):
        if _distance_keeps(probabilities, distances, threshold, bound, needed):
            return bound
        # Answer the most familiar of the refused notumor answers again, and look again.
        refused = np.concatenate(
            [d[_unfamiliar_notumor(probabilities, d, bound) & (d <= threshold)] for d in distances]
        )
        bound = float(refused.min()) * (1 + _MARGIN) if refused.size else math.inf
    return math.inf


def notumor_floor_for(
    probabilities: np.ndarray, labels: np.ndarray, answered: np.ndarray, refuse: float
) -> float:
    """The P(notumor) below which a notumor answer is refused: the `refuse` quantile of
    P(notumor) over the answered, right notumor answers (0 with none, or refuse 0)."""
    right = answered & (probabilities.argmax(axis=1) == NOTUMOR_ID) & (labels == NOTUMOR_ID)
    if refuse <= 0 or not right.any():
        return 0.0
    values = np.sort(probabilities[right, NOTUMOR_ID].astype(np.float64))
    refused = math.floor(refuse * len(values) + 1e-9)  # at most this many of them
    return float(values[refused]) - _MARGIN if refused < len(values) else float(values[-1])


def _within_budget(
    probabilities: np.ndarray, floor: float, passes: tuple[np.ndarray, ...], needed: int
) -> float:
    """`floor`, lowered just enough that every mask in `passes`, less the notumor answers
    below the floor, keeps at least `needed` examples (0 if even that cannot be)."""
    p_notumor = probabilities[:, NOTUMOR_ID].astype(np.float64)
    while floor > 0.0:
        unsure = _uncertain_notumor(probabilities, floor)
        if all(int((mask & ~unsure).sum()) >= needed for mask in passes):
            return floor
        # Answer the most confident of the refused notumor answers again, and look again.
        floor = float(p_notumor[unsure].max()) - _MARGIN if unsure.any() else 0.0
    return 0.0


def _whitening(residuals: np.ndarray) -> np.ndarray:
    """W with W^T Σ W = I for the Ledoit-Wolf shrunk covariance Σ of centred residuals."""
    from sklearn.covariance import ledoit_wolf

    cov, _ = ledoit_wolf(residuals, assume_centered=True)
    values, vectors = np.linalg.eigh(cov)
    values = np.maximum(values, EIGEN_FLOOR * max(float(values.max()), 1e-12))
    return vectors / np.sqrt(values)[None, :]


def _layer_stats(name: str, features: np.ndarray, labels: np.ndarray) -> LayerStats:
    features = features.astype(np.float64)
    classes = np.unique(labels)
    means = np.stack([features[labels == k].mean(axis=0) for k in classes])
    residuals = features - means[np.searchsorted(classes, labels)]
    whitening = _whitening(residuals)
    return LayerStats(name, whitening, means @ whitening)


def _folds(labels: np.ndarray, folds: int, seed: int, groups: np.ndarray | None = None) -> np.ndarray:
    """Fold index per example: with `groups` (the patient or near-duplicate group of each
    example), whole groups to a fold, so no example is scored by statistics fitted on its
    neighbouring slices; without, examples one by one, classes spread over the folds."""
    rng = np.random.default_rng(seed)
    if groups is not None:
        units, unit_of = np.unique(np.asarray(groups).astype(str), return_inverse=True)
        unit_fold = (np.arange(len(units)) + rng.integers(folds)) % folds
        return unit_fold[rng.permutation(len(units))][unit_of]
    fold = np.empty(len(labels), int)
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        fold[idx] = (np.arange(len(idx)) + rng.integers(folds)) % folds
    return fold


def _order_statistic(values: np.ndarray, share: float) -> float:
    """The smallest value v with at least `share` of `values` <= v."""
    ordered = np.sort(values)
    k = min(len(ordered), max(1, math.ceil(share * len(ordered) - 1e-9)))
    return float(ordered[k - 1])


def cross_fitted_distances(
    names: list[str],
    features: list[np.ndarray],
    labels: np.ndarray,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Per layer, each example's distance under statistics fitted without its fold
    (unscaled); folds by `groups` when given (_folds). With fewer than two examples (or
    groups) per fold, in-sample distances."""
    units = len(labels) if groups is None else len(np.unique(np.asarray(groups).astype(str)))
    folds = min(folds, units // 2)
    if folds < 2:
        return [_layer_stats(n, f, labels).distances(f) for n, f in zip(names, features)]
    fold = _folds(labels, folds, seed, groups)
    out = [np.empty(len(labels)) for _ in names]
    for i in range(folds):
        held, rest = fold == i, fold != i
        if not held.any():
            continue
        for j, (name, f) in enumerate(zip(names, features)):
            out[j][held] = _layer_stats(name, f[rest], labels[rest]).distances(f[held])
    return out


def fit(
    names: list[str],
    features: list[np.ndarray],
    labels: np.ndarray,
    probabilities: np.ndarray,
    accept: float = TRAINER_DEFAULTS.abstention_accept,
    ood_share: float = TRAINER_DEFAULTS.abstention_ood_share,
    folds: int = DEFAULT_FOLDS,
    seed: int = 0,
    notumor_refuse: float = TRAINER_DEFAULTS.abstention_notumor_refuse,
    notumor_ood_refuse: float = TRAINER_DEFAULTS.abstention_notumor_ood_refuse,
    groups: np.ndarray | None = None,
) -> AbstentionSpec:
    """Fits the detector on held-out in-distribution data: pooled `features` per layer
    ([N, d_l]), true `labels` [N] and the served (calibrated) `probabilities` [N, K].
    At least `accept` of these examples are accepted by the returned spec: the notumor
    floor gives way when it alone would refuse more than the budget. `groups` [N]: each
    example's patient or near-duplicate group; the cross-fitting then holds out whole
    groups, so its acceptance is what new patients meet (slices of one patient are near
    copies: scored beside their neighbours they look more familiar than a new patient)."""
    if not (
        0.0 < accept <= 1.0
        and 0.0 <= ood_share <= 1.0
        and 0.0 <= notumor_refuse < 1.0
        and 0.0 <= notumor_ood_refuse < 1.0
    ):
        raise ValueError(
            "accept must be in (0, 1], ood_share in [0, 1], notumor_refuse and notumor_ood_refuse "
            f"in [0, 1), got {accept}, {ood_share}, {notumor_refuse}, {notumor_ood_refuse}"
        )
    labels = np.asarray(labels).astype(int).reshape(-1)
    n = len(labels)
    if n == 0:
        raise ValueError("no examples to fit abstention on")
    if groups is not None and len(groups) != n:
        raise ValueError(f"{len(groups)} groups for {n} examples")
    oof = cross_fitted_distances(names, features, labels, folds, seed, groups)
    layers = [_layer_stats(name, f, labels) for name, f in zip(names, features)]
    for layer, d in zip(layers, oof):
        layer.scale = max(float(np.median(d)), 1e-12)
    combined_oof = np.max([d / layer.scale for layer, d in zip(layers, oof)], axis=0)
    combined_in = np.max([layer.distances(f) for layer, f in zip(layers, features)], axis=0)
    distances = (combined_in, combined_oof)

    def threshold_at(share: float) -> float:
        """Passes `share` of the examples, in sample and cross-fitted."""
        return max(_order_statistic(d, share) for d in distances) * (1 + _MARGIN)

    # The distance's share of the rejection budget: at first all for the threshold.
    distance_budget = ood_share * (1.0 - accept)
    threshold = threshold_at(1.0 - distance_budget)
    unpaid_threshold = threshold

    # The notumor distance bound: of the right notumor answers the threshold may let
    # through, it refuses the least familiar `notumor_ood_refuse` (in sample and
    # cross-fitted), and notumor answers past it go too. The threshold for every answer
    # moves out to pay for it, so the two distance rules together refuse no more than
    # the distance's budget and the floors below keep theirs; but no further than a
    # quarter of that budget (images that are no brain slice lie far beyond either).
    # Where that does not pay, the bound gives way.
    needed_distance = math.ceil((1.0 - distance_budget) * n - 1e-9)
    loosest = max(threshold, threshold_at(1.0 - distance_budget / 4))
    passes = [d <= loosest for d in distances]  # the most the threshold may let through
    wanted_bound = notumor_ood_bound_for(probabilities, labels, distances, passes, notumor_ood_refuse)
    if math.isfinite(wanted_bound):
        threshold = _paying_threshold(
            probabilities, distances, threshold, loosest, wanted_bound, needed_distance
        )
    bound = _bound_within_budget(probabilities, wanted_bound, distances, threshold, needed_distance)
    passes_in, passes_oof = _distance_passes(probabilities, distances, threshold, bound)
    bound_score = min(bound / threshold, 1.0)
    needed = math.ceil(accept * n - 1e-9)

    # The notumor floor: of the right notumor answers still let through, it may refuse
    # `notumor_refuse`; the wrong notumor answers below it go too. A weak model (many
    # wrong notumor answers) would blow the budget that way, so the floor gives way
    # until the rules so far and it together still answer `accept`, in sample and
    # cross-fitted.
    wanted_floor = notumor_floor_for(probabilities, labels, passes_in, notumor_refuse)
    notumor_floor = _within_budget(probabilities, wanted_floor, (passes_in, passes_oof), needed)
    unsure = _uncertain_notumor(probabilities, notumor_floor)

    # The confidence floor takes the rest of the budget. It is chosen so that both the
    # cross-fitted decision (what a new image meets) and the in-sample one (what the
    # graph does on these very images) answer at least `accept`: the lower of the two.
    confidence = probabilities.max(axis=1).astype(np.float64)

    def floor_for(passes: np.ndarray) -> float:
        kept = np.sort(confidence[passes & ~unsure])[::-1]
        return float(kept[needed - 1]) - _MARGIN if 0 < needed <= len(kept) else 0.0

    floor = max(min(floor_for(passes_in), floor_for(passes_oof)), 0.0)

    spec = AbstentionSpec(
        layers,
        float(threshold),
        floor,
        float(accept),
        float(ood_share),
        cross_fitted_scores=combined_oof / threshold,
        notumor_floor=notumor_floor,
        notumor_ood_bound=bound_score,
    )
    score, abstain, reason = spec.decide(probabilities, features)
    correct = probabilities.argmax(axis=1) == labels
    oof_accept = float(np.mean(passes_oof & (confidence >= floor) & ~unsure))
    spec.fit_report = {
        "fitted_on": "eval split (held out from training the weights)",
        "examples": int(n),
        # What the cross-fitting held out together: what `accepted_share_cross_fitted` estimates.
        "cross_fitted_by": "patient / near-duplicate group" if groups is not None else "example",
        "units": int(len(np.unique(np.asarray(groups).astype(str)))) if groups is not None else int(n),
        "per_class": {int(k): int((labels == k).sum()) for k in np.unique(labels)},
        "accepted_share": float(1 - abstain.mean()),
        "accepted_share_cross_fitted": oof_accept,
        "abstained_out_of_distribution": int((reason == REASON_OUT_OF_DISTRIBUTION).sum()),
        "abstained_low_confidence": int((reason == REASON_LOW_CONFIDENCE).sum()),
        "abstained_uncertain_no_tumour": int((reason == REASON_UNCERTAIN_NO_TUMOUR).sum()),
        # The floor `notumor_refuse` asked for; above notumor_floor when it had to give way.
        "notumor_floor_wanted": float(wanted_floor),
        # The same for the distance bound; below notumor_ood_bound when it had to give way.
        "notumor_ood_bound_wanted": min(float(wanted_bound / threshold), 1.0),
        # The distance threshold before it moved out to pay for the notumor bound (as ood_score).
        "ood_threshold_unpaid": float(unpaid_threshold / threshold),
        # Notumor answers of the eval split refused for the distance bound alone.
        "abstained_unfamiliar_no_tumour": int(
            (
                (reason == REASON_UNCERTAIN_NO_TUMOUR)
                & _unfamiliar_notumor(probabilities, score, bound_score)
                & ~_uncertain_notumor(probabilities, notumor_floor)
            ).sum()
        ),
        "accuracy_all": float(correct.mean()),
        "accuracy_accepted": float(correct[~abstain].mean()) if (~abstain).any() else None,
    }
    return spec


# ---- the graph -----------------------------------------------------------------------


def outputs(spec: AbstentionSpec, probabilities, features: list) -> dict:
    """The three serving outputs from the model's (calibrated) probabilities [N, K] and
    its pooled features (one [N, d_l] tensor per layer), the fitted numbers as constants."""
    import tensorflow as tf

    combined = None
    for layer, f in zip(spec.layers, features):
        z = tf.matmul(tf.cast(f, tf.float32), tf.constant(layer.whitening, tf.float32))
        d2 = tf.reduce_sum(tf.square(z[:, None, :] - tf.constant(layer.means, tf.float32)[None]), -1)
        dist = tf.sqrt(tf.reduce_min(d2, axis=1) / float(layer.whitening.shape[1])) / layer.scale
        combined = dist if combined is None else tf.maximum(combined, dist)
    score = combined / spec.ood_threshold
    out = tf.logical_not(score <= 1.0)  # NaN counts as out of distribution
    low = tf.logical_and(tf.logical_not(out), tf.reduce_max(probabilities, axis=1) < spec.confidence_floor)
    notumor = tf.logical_and(
        tf.equal(tf.argmax(probabilities, axis=1), NOTUMOR_ID),
        tf.logical_or(probabilities[:, NOTUMOR_ID] < spec.notumor_floor, score > spec.notumor_ood_bound),
    )
    unsure = tf.logical_and(tf.logical_not(tf.logical_or(out, low)), notumor)

    def text(value):
        return tf.fill(tf.shape(score), value)

    reason = tf.where(
        out,
        text(REASON_OUT_OF_DISTRIBUTION),
        tf.where(
            low, text(REASON_LOW_CONFIDENCE), tf.where(unsure, text(REASON_UNCERTAIN_NO_TUMOUR), text(""))
        ),
    )
    return {OOD_SCORE: score, ABSTAIN: tf.logical_or(tf.logical_or(out, low), unsure), ABSTAIN_REASON: reason}


# ---- the Keras side: which features, collected how ----------------------------------

PENULTIMATE = "penultimate"  # the pooled features the logits read
SPATIAL = "spatial_2x2"  # the Grad-CAM map average-pooled to 2x2 (layout)
FINE_MEAN = "fine_mean"  # the fine map, globally pooled
COARSE_MEAN = "coarse_mean"  # the Grad-CAM map, globally pooled
# Candidate feature sets, in order of preference: the first the model offers is kept
# unless another separates the Trainer's generated outliers from cross-fitted eval slices
# by more than AUROC_MARGIN (`choose`). Those outliers are far from any scan and every set
# scores above 0.998 on them, so the fourth decimal used to decide; on another site's
# brain MRI (skull-stripped BraTS slices) the layout features abstained on far more of
# the wrong answers than the pooled fine and coarse maps did (docs/experiments.md).
CANDIDATES = ((SPATIAL, PENULTIMATE), (PENULTIMATE,), (FINE_MEAN, COARSE_MEAN, PENULTIMATE))
AUROC_MARGIN = 0.005
MAX_SPATIAL_DIMS = 1024  # a 2x2 pooling of a wider map is left out


def feature_tensors(model) -> dict[str, object]:
    """Every candidate feature the model offers: name → pooled [N, d] Keras tensor."""
    from tf_keras import layers

    from components.training.models import (
        GRADCAM_FINE_LAYER,
        GRADCAM_LAYER,
        GRID_FEATURES_LAYER,
        LOGITS_LAYER,
        PENULTIMATE_LAYER,
    )

    names = {layer.name for layer in model.layers}
    found = {}
    # The 14x14 stage: tagged GRID_FEATURES_LAYER where the Grad-CAM layer is class
    # evidence (4 channels say little about what an image is).
    grid_layer = GRID_FEATURES_LAYER if GRID_FEATURES_LAYER in names else GRADCAM_LAYER
    if grid_layer in names:
        grid = model.get_layer(grid_layer).output
        if len(grid.shape) == 4:
            if 4 * grid.shape[-1] <= MAX_SPATIAL_DIMS and min(grid.shape[1:3]) >= 2:
                pool = (grid.shape[1] // 2, grid.shape[2] // 2)
                found[SPATIAL] = layers.Flatten(name="ood_spatial_flat")(
                    layers.AveragePooling2D(pool, strides=pool, name="ood_spatial_pool")(grid)
                )
            found[COARSE_MEAN] = layers.GlobalAveragePooling2D(name="ood_coarse_pool")(grid)
    if GRADCAM_FINE_LAYER in names:
        fine = model.get_layer(GRADCAM_FINE_LAYER).output
        if len(fine.shape) == 4:
            found[FINE_MEAN] = layers.GlobalAveragePooling2D(name="ood_fine_pool")(fine)
    if PENULTIMATE_LAYER in names:  # a model whose logits are not a linear head's
        found[PENULTIMATE] = layers.GlobalAveragePooling2D(name="ood_penultimate_pool")(
            model.get_layer(PENULTIMATE_LAYER).output
        )
    else:
        found[PENULTIMATE] = model.get_layer(LOGITS_LAYER).input
    return found


def candidate_sets(available) -> list[tuple[str, ...]]:
    return [c for c in CANDIDATES if all(n in available for n in c)]


def scoring_model(model, names=None):
    """(keras.Model: image → [probabilities, pooled feature per name] in one pass, names).
    Without `names`: every candidate feature."""
    import tf_keras as keras

    tensors = feature_tensors(model)
    names = list(tensors) if names is None else list(names)
    return keras.Model(
        model.inputs, [model.output, *[tensors[n] for n in names]], name="abstention_features"
    ), names


def collect(scorer, batches) -> tuple[np.ndarray, list[np.ndarray]]:
    """(probabilities, features per layer) over an iterable of image batches."""
    probs, feats = [], None
    for images in batches:
        out = scorer(images, training=False)
        probs.append(np.asarray(out[0], np.float32))
        arrays = [np.asarray(t, np.float32) for t in out[1:]]
        feats = [[a] for a in arrays] if feats is None else [f + [a] for f, a in zip(feats, arrays)]
    return np.concatenate(probs), [np.concatenate(f) for f in feats]


def auroc(inside: np.ndarray, outside: np.ndarray) -> float:
    """P(an outlier scores above an in-distribution image), ties counted half."""
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([inside, outside]))
    n_in, n_out = len(inside), len(outside)
    return float((ranks[n_in:].sum() - n_out * (n_out + 1) / 2) / (n_in * n_out))


def choose(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    probabilities: np.ndarray,
    outliers: dict[str, list[np.ndarray]] | None,
    **fit_kw,
) -> AbstentionSpec:
    """Fits every candidate feature set and keeps the first (CANDIDATES' order) unless
    another's score separates the outliers (name → features per kind) from the fitting
    data's cross-fitted scores better by more than AUROC_MARGIN (`preferred`; without
    outliers, the first). The comparison goes into the spec's fit report."""
    sets = candidate_sets(features)
    tried, specs = [], []
    for names in sets:
        spec = fit(list(names), [features[n] for n in names], labels, probabilities, **fit_kw)
        row = {"features": list(names)}
        if outliers:
            scores = {k: spec.ood_scores([f[n] for n in names]) for k, f in outliers.items()}
            row["auroc"] = auroc(spec.cross_fitted_scores, np.concatenate(list(scores.values())))
            row["abstained_per_kind"] = {k: float(np.mean(~(s <= 1.0))) for k, s in scores.items()}
        tried.append(row)
        specs.append(spec)
    chosen = preferred([row.get("auroc") for row in tried])
    spec = specs[chosen]
    spec.fit_report["feature_choice"] = {
        "chosen": tried[chosen]["features"],
        "by": f"the first candidate unless another's AUROC of ood_score (cross-fitted eval images vs "
        f"the Trainer's own generated outliers, components/training/outliers.py) is more than "
        f"{AUROC_MARGIN} higher"
        if outliers
        else "first candidate",
        "candidates": tried,
    }
    return spec


def preferred(aurocs: list[float | None], margin: float = AUROC_MARGIN) -> int:
    """Index of the candidate to keep: the first, replaced by a later one only when its
    AUROC beats the kept one's by more than `margin` (None: not measured, never replaces)."""
    best = 0
    for i, value in enumerate(aurocs[1:], start=1):
        if value is not None and aurocs[best] is not None and value > aurocs[best] + margin:
            best = i
    return best


def write(spec: AbstentionSpec, model_dir: str, extra: dict | None = None) -> str:
    """abstention.json beside saved_model.pb (TF Serving ignores it)."""
    import tensorflow as tf

    path = os.path.join(model_dir, ABSTENTION_FILE)
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps({**spec.to_json(), **(extra or {})}, indent=1))
    return path


def read(model_dir: str) -> dict | None:
    """abstention.json of an exported model, or None for a model exported before it."""
    import tensorflow as tf

    path = os.path.join(model_dir, ABSTENTION_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        return json.loads(f.read())
