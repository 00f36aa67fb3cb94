"""What the data looked like: the prepare manifest (counts, skipped files,
duplicates) and the TFDV statistics and anomalies the pipeline computed."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from btmri.documents import Manifest
from btmri.layout import MANIFEST_FILE, SYNTH_MARKER_FILE
from btmri import spec
from data_prep.duplicates import DEFAULT_NEAR_THRESHOLD

SIZE_FEATURES = (spec.HEIGHT_KEY, spec.WIDTH_KEY)


@dataclass
class SplitStatistics:
    """TFDV's view of one split."""

    examples: int
    sizes: dict[str, tuple[float, float, float, float]]  # feature → (min, median, mean, max)
    missing: dict[str, int]  # feature → examples without it


@dataclass
class DataSummary:
    manifest: Manifest | None
    manifest_path: str | None
    statistics: dict[str, SplitStatistics] = field(default_factory=dict)
    anomalies: dict[str, list[str]] = field(default_factory=dict)  # split → descriptions
    synthetic: bool = False

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return self.manifest.counts if self.manifest else {}

    @property
    def near_threshold(self) -> int:
        """The perceptual-hash distance prepare counted as a near duplicate."""
        duplicates = self.manifest.duplicates if self.manifest else None
        return duplicates.near_threshold_bits if duplicates else DEFAULT_NEAR_THRESHOLD


def _is_synthetic(data_dir: str | None) -> bool:
    """The phantom generator's folders carry its marker file or lesion masks."""
    if not data_dir:
        return False
    from data_prep.synth import MASKS_DIR

    return (Path(data_dir) / SYNTH_MARKER_FILE).is_file() or (Path(data_dir) / MASKS_DIR).is_dir()


def _split_statistics(stats_uri: str, split: str) -> SplitStatistics | None:
    import tensorflow_data_validation as tfdv

    path = os.path.join(stats_uri, f"Split-{split}", "FeatureStats.pb")
    if not os.path.isfile(path):
        return None
    dataset = tfdv.load_stats_binary(path).datasets[0]
    sizes, missing = {}, {}
    for feature in dataset.features:
        name = ".".join(feature.path.step)
        stats = feature.num_stats if feature.HasField("num_stats") else None
        common = (
            stats.common_stats
            if stats
            else (feature.string_stats.common_stats if feature.HasField("string_stats") else None)
        )
        if common is not None:
            missing[name] = int(common.num_missing)
        if stats is not None and name in SIZE_FEATURES:
            sizes[name] = (stats.min, stats.median, stats.mean, stats.max)
    return SplitStatistics(int(dataset.num_examples), sizes, missing)


def _split_anomalies(anomalies_uri: str, split: str) -> list[str] | None:
    from tensorflow_data_validation.utils.anomalies_util import load_anomalies_binary

    path = os.path.join(anomalies_uri, f"Split-{split}", "SchemaDiff.pb")
    if not os.path.isfile(path):
        return None
    anomalies = load_anomalies_binary(path)
    found = [
        f"{name}: {info.short_description} ({info.description})"
        for name, info in sorted(anomalies.anomaly_info.items())
    ]
    if anomalies.HasField("dataset_anomaly_info"):
        info = anomalies.dataset_anomaly_info
        found.append(f"dataset: {info.short_description} ({info.description})")
    return found


def summarize_data(
    data_root: str | None, splits: list[str], statistics_uri: str | None, anomalies_uri: str | None
) -> DataSummary:
    manifest, manifest_path = None, None
    if data_root:
        manifest = Manifest.read_if_present(data_root)
        if manifest is not None:
            manifest_path = os.path.join(data_root, MANIFEST_FILE)
    summary = DataSummary(
        manifest, manifest_path, synthetic=_is_synthetic(manifest.data_dir if manifest else None)
    )
    for split in splits:
        if statistics_uri and (stats := _split_statistics(statistics_uri, split)):
            summary.statistics[split] = stats
        if anomalies_uri and (found := _split_anomalies(anomalies_uri, split)) is not None:
            summary.anomalies[split] = found
    return summary
