"""Exact and near duplicate detection, within and across splits.

Exact duplicates share the md5 of their bytes. Near duplicates (re-encoded,
resized, slightly cropped copies) share a perceptual hash up to a small Hamming
distance. The hash is the classic DCT pHash: 32x32 grayscale, 2-D DCT, the 8x8
lowest frequencies without DC, each bit = coefficient above the median.
"""
from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

import cv2
import numpy as np

DEFAULT_NEAR_THRESHOLD = 4  # bits of 64; measured in the test on re-encoded/cropped copies


def perceptual_hash(gray_small: np.ndarray) -> int:
    """64-bit pHash of a 32x32 float32 grayscale thumbnail."""
    coeffs = cv2.dct(np.asarray(gray_small, np.float32))[:8, :8].ravel()[1:]
    median = np.partition(coeffs, 31)[31]  # 63 values: the 32nd smallest
    bits = np.packbits(coeffs > median)  # 63 bits, MSB first, zero-padded
    return int.from_bytes(bits.tobytes(), "big") >> 1


def popcount64(values: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (SWAR: a dozen vectorised ops, no per-byte lookup)."""
    v = values - ((values >> np.uint64(1)) & np.uint64(0x5555555555555555))
    v = (v & np.uint64(0x3333333333333333)) + ((v >> np.uint64(2)) & np.uint64(0x3333333333333333))
    v = (v + (v >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return (v * np.uint64(0x0101010101010101)) >> np.uint64(56)


def hamming_to_many(value: int, others: np.ndarray) -> np.ndarray:
    """Hamming distances between one 64-bit hash and a uint64 array of hashes."""
    return popcount64(np.bitwise_xor(others, np.uint64(value)))


@dataclass
class Record:
    """What the duplicate finder needs to know about one kept image."""
    source: str
    split: str
    label: int
    md5: str
    phash: int


@dataclass
class DuplicateIndex:
    """Collects records as they are written; reports at the end."""
    threshold: int = DEFAULT_NEAR_THRESHOLD
    records: list[Record] = field(default_factory=list)
    _train_hashes: list[int] = field(default_factory=list)
    _train_sources: list[str] = field(default_factory=list)   # parallel to _train_hashes
    _train_md5: dict[str, str] = field(default_factory=dict)
    _train_array: np.ndarray | None = None                     # _train_hashes as uint64, cached

    def add(self, record: Record) -> None:
        self.records.append(record)
        if record.split == "train":
            self._train_hashes.append(record.phash)
            self._train_sources.append(record.source)
            self._train_md5.setdefault(record.md5, record.source)
            self._train_array = None

    def training_match(self, md5: str, phash: int) -> tuple[str, str, int] | None:
        """The training image an incoming image duplicates, as (kind, source, distance),
        or None. Train records must have been added first."""
        if md5 in self._train_md5:
            return "exact", self._train_md5[md5], 0
        if not self._train_hashes:
            return None
        if self._train_array is None:  # built once: all train records come first
            self._train_array = np.array(self._train_hashes, np.uint64)
        dist = hamming_to_many(phash, self._train_array)
        best = int(np.argmin(dist))
        if dist[best] <= self.threshold:
            return "near", self._train_sources[best], int(dist[best])
        return None

    def report(self, max_listed: int = 200) -> dict:
        """Exact groups and near pairs, summarised per split and per split pair."""
        by_md5: dict[str, list[Record]] = defaultdict(list)
        for rec in self.records:
            by_md5[rec.md5].append(rec)
        exact_groups = [g for g in by_md5.values() if len(g) > 1]

        exact_within: dict[str, int] = defaultdict(int)   # extra copies inside a split
        exact_cross: dict[str, int] = defaultdict(int)    # images with a copy in another split
        conflicting = []
        for group in exact_groups:
            for split, n in Counter(r.split for r in group).items():
                if n > 1:
                    exact_within[split] += n - 1
            for pair in _split_pairs({r.split for r in group}):
                exact_cross[pair] += sum(r.split == pair.split("-")[0] for r in group)
            if len({r.label for r in group}) > 1:
                conflicting.append([[r.source, r.label] for r in group])

        near_pairs = self._near_pairs()
        near_within: dict[str, int] = defaultdict(int)
        near_cross: dict[str, int] = defaultdict(int)
        for a, b, _ in near_pairs:
            ra, rb = self.records[a], self.records[b]
            if ra.split == rb.split:
                near_within[ra.split] += 1
            else:
                near_cross["-".join(_ordered(ra.split, rb.split))] += 1

        return {
            "near_threshold_bits": self.threshold,
            "exact": {
                "groups": len(exact_groups),
                "extra_copies": sum(len(g) - 1 for g in exact_groups),
                "extra_copies_within_split": dict(exact_within),
                "images_with_copy_in_other_split": dict(exact_cross),
                "conflicting_labels": conflicting,
                "groups_listed": [[r.source for r in g] for g in exact_groups[:max_listed]],
            },
            "near": {
                "pairs": len(near_pairs),
                "pairs_within_split": dict(near_within),
                "pairs_across_splits": dict(near_cross),
                "pairs_listed": [
                    [self.records[a].source, self.records[b].source, d]
                    for a, b, d in near_pairs[:max_listed]
                ],
            },
        }

    def _near_pairs(self, block: int = 256) -> list[tuple[int, int, int]]:
        """All pairs within the threshold that are not byte-identical. Brute force in
        blocks: N=6,000 takes well under a second and memory stays O(block * N)."""
        hashes = np.array([r.phash for r in self.records], np.uint64)
        pairs = []
        for start in range(0, len(hashes), block):
            rows, rest = hashes[start:start + block], hashes[start:]  # upper triangle only
            dist = popcount64(np.bitwise_xor(rows[:, None], rest[None, :]))
            for i, j in zip(*np.nonzero(dist <= self.threshold)):
                a, b = start + int(i), start + int(j)
                if a < b and self.records[a].md5 != self.records[b].md5:
                    pairs.append((a, b, int(dist[i, j])))
        return pairs


_SPLIT_ORDER = {"eval": 0, "test": 1, "train": 2}


def _ordered(a: str, b: str) -> tuple[str, str]:
    """Split pairs are named held-out first: 'eval-train', 'test-train', 'eval-test'."""
    return tuple(sorted((a, b), key=lambda s: _SPLIT_ORDER.get(s, 9)))  # type: ignore[return-value]


def _split_pairs(splits: set[str]) -> list[str]:
    ordered = sorted(splits, key=lambda s: _SPLIT_ORDER.get(s, 9))
    return ["-".join((a, b)) for i, a in enumerate(ordered) for b in ordered[i + 1:]]
