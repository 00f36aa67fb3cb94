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

from btmri.documents import DuplicateReport, ExactDuplicates, NearDuplicates

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
    phash: int | None  # None: undecodable, matched by its bytes only (never by prepare)


@dataclass
class DuplicateIndex:
    """Collects records as they are written; reports at the end."""

    threshold: int = DEFAULT_NEAR_THRESHOLD
    records: list[Record] = field(default_factory=list)
    _train_hashes: list[int] = field(default_factory=list)
    _train_sources: list[str] = field(default_factory=list)  # parallel to _train_hashes
    _train_md5: dict[str, str] = field(default_factory=dict)
    _train_array: np.ndarray | None = None  # _train_hashes as uint64, cached

    def add(self, record: Record) -> None:
        self.records.append(record)
        if record.split == "train":
            self._train_md5.setdefault(record.md5, record.source)
            if record.phash is not None:
                self._train_hashes.append(record.phash)
                self._train_sources.append(record.source)
                self._train_array = None

    def training_match(
        self, md5: str, phash: int | None, threshold: int | None = None
    ) -> tuple[str, str, int] | None:
        """The training image an incoming image duplicates, as (kind, source, distance),
        or None: the same bytes, else the nearest perceptual hash within `threshold`
        bits (default: the index's). Train records must have been added first. The one
        matching rule: prepare drops with it, the report de-duplicates with it."""
        threshold = self.threshold if threshold is None else threshold
        if md5 in self._train_md5:
            return "exact", self._train_md5[md5], 0
        if phash is None or not self._train_hashes:
            return None
        if self._train_array is None:  # built once: all train records come first
            self._train_array = np.array(self._train_hashes, np.uint64)
        dist = hamming_to_many(phash, self._train_array)
        best = int(np.argmin(dist))
        if dist[best] <= threshold:
            return "near", self._train_sources[best], int(dist[best])
        return None

    def report(self, max_listed: int = 200) -> DuplicateReport:
        """Exact groups and near pairs, summarised per split and per split pair. Every
        count is exact; at most `max_listed` exact groups and near pairs are listed,
        and memory never grows with the number of pairs."""
        by_md5: dict[str, list[Record]] = defaultdict(list)
        for rec in self.records:
            by_md5[rec.md5].append(rec)
        exact_groups = [g for g in by_md5.values() if len(g) > 1]

        exact_within: dict[str, int] = defaultdict(int)  # extra copies inside a split
        exact_cross: dict[str, int] = defaultdict(int)  # images with a copy in another split
        conflicting = []
        for group in exact_groups:
            for split, n in Counter(r.split for r in group).items():
                if n > 1:
                    exact_within[split] += n - 1
            for pair in _split_pairs({r.split for r in group}):
                exact_cross[pair] += sum(r.split == pair.split("-")[0] for r in group)
            if len({r.label for r in group}) > 1:
                conflicting.append([[r.source, r.label] for r in group])

        return DuplicateReport(
            near_threshold_bits=self.threshold,
            exact=ExactDuplicates(
                groups=len(exact_groups),
                extra_copies=sum(len(g) - 1 for g in exact_groups),
                extra_copies_within_split=dict(exact_within),
                images_with_copy_in_other_split=dict(exact_cross),
                conflicting_labels=conflicting,
                groups_listed=[[r.source for r in g] for g in exact_groups[:max_listed]],
            ),
            near=NearDuplicates(**self._near_pairs(max_listed)),
        )

    def _near_pairs(self, max_listed: int, block_elements: int = 1 << 21) -> dict:
        """Pairs within the threshold that are not byte-identical: counted exactly per
        split and split pair; the first `max_listed` pairs (in record order) listed.

        Memory stays O(records + block_elements), never O(pairs): 100,000 images with
        one hash make 5 billion pairs, which are counted, not enumerated. Records are
        grouped by hash: pairs inside a group of equal hashes come from the group's
        split counts (minus byte-identical pairs: same md5), pairs between groups from
        a blocked brute force over the distinct hashes (6,000 distinct hashes take
        well under a second).
        """
        records = self.records
        n = len(records)
        split_names = sorted({r.split for r in records})
        n_splits = len(split_names)
        if n == 0:
            return {"pairs": 0, "pairs_within_split": {}, "pairs_across_splits": {}, "pairs_listed": []}
        hashes = np.fromiter((r.phash for r in records), np.uint64, n)
        split_ids = np.fromiter((split_names.index(r.split) for r in records), np.int64, n)
        md5_index: dict[str, int] = {}
        md5_ids = np.fromiter((md5_index.setdefault(r.md5, len(md5_index)) for r in records), np.int64, n)
        del md5_index
        uniq, hash_ids = np.unique(hashes, return_inverse=True)
        hash_ids = hash_ids.reshape(-1)
        n_uniq = len(uniq)
        # Images per (distinct hash, split) and per (same file = hash and md5, split).
        per_hash = np.bincount(hash_ids * n_splits + split_ids, minlength=n_uniq * n_splits).reshape(
            n_uniq, n_splits
        )
        files, file_ids = np.unique(np.stack([hash_ids, md5_ids]), axis=1, return_inverse=True)
        per_file = np.bincount(
            file_ids.reshape(-1) * n_splits + split_ids, minlength=files.shape[1] * n_splits
        ).reshape(-1, n_splits)
        # A hash has a partner when two different files share it, or another hash is near.
        has_partner = np.bincount(files[0], minlength=n_uniq) >= 2

        pairs = np.zeros((n_splits, n_splits), np.int64)  # [s, t]: within s on the diagonal
        diag, upper = np.diag_indices(n_splits), np.triu_indices(n_splits, 1)

        def add_within(counts: np.ndarray, sign: int) -> None:
            """Pairs inside each group; `counts` holds one row of split counts per group."""
            pairs[diag] += sign * (counts * (counts - 1) // 2).sum(axis=0)
            pairs[upper] += sign * (counts.T @ counts)[upper]

        add_within(per_hash, 1)  # equal hashes (distance 0) ...
        add_within(per_file, -1)  # ... except byte-identical copies
        block = max(1, block_elements // n_uniq)
        for start in range(0, n_uniq, block):
            rows, rest = uniq[start : start + block], uniq[start + 1 :]  # later hashes only
            dist = popcount64(np.bitwise_xor(rows[:, None], rest[None, :]))
            near = dist <= self.threshold
            near &= np.arange(len(rest))[None, :] >= np.arange(len(rows))[:, None]
            i, j = np.nonzero(near)
            if len(i):
                a, b = per_hash[start + i], per_hash[start + 1 + j]
                cross = a.T @ b  # [s, t]: image pairs with one in s, the other in t
                pairs[diag] += np.diag(cross)
                pairs[upper] += (cross + cross.T)[upper]
                has_partner[start + i] = True
                has_partner[start + 1 + j] = True

        within = {split_names[s]: int(pairs[s, s]) for s in range(n_splits) if pairs[s, s]}
        across: dict[str, int] = defaultdict(int)
        for s, t in zip(*upper):
            if pairs[s, t]:
                across["-".join(_ordered(split_names[s], split_names[t]))] += int(pairs[s, t])
        return {
            "pairs": int(pairs[diag].sum() + pairs[upper].sum()),
            "pairs_within_split": within,
            "pairs_across_splits": dict(across),
            "pairs_listed": self._first_pairs(hashes, md5_ids, has_partner[hash_ids], max_listed),
        }

    def _first_pairs(
        self, hashes: np.ndarray, md5_ids: np.ndarray, candidate: np.ndarray, max_listed: int
    ) -> list[list]:
        """The first `max_listed` near pairs (a < b, in record order), each as
        [source a, source b, distance]. Only images with a partner are visited, and
        every visited image adds a pair or has its partner listed already, so at most
        about 2 x max_listed rows of N distances are computed."""
        listed: list[list] = []
        for a in np.flatnonzero(candidate):
            if len(listed) >= max_listed:
                break
            dist = popcount64(np.bitwise_xor(hashes[a + 1 :], hashes[a]))
            match = np.flatnonzero((dist <= self.threshold) & (md5_ids[a + 1 :] != md5_ids[a]))
            for j in match[: max_listed - len(listed)]:
                listed.append([self.records[a].source, self.records[a + 1 + j].source, int(dist[j])])
        return listed


_SPLIT_ORDER = {"eval": 0, "test": 1, "train": 2}


def _ordered(a: str, b: str) -> tuple[str, str]:
    """Split pairs are named held-out first: 'eval-train', 'test-train', 'eval-test'."""
    return tuple(sorted((a, b), key=lambda s: _SPLIT_ORDER.get(s, 9)))  # type: ignore[return-value]


def _split_pairs(splits: set[str]) -> list[str]:
    ordered = sorted(splits, key=lambda s: _SPLIT_ORDER.get(s, 9))
    return ["-".join((a, b)) for i, a in enumerate(ordered) for b in ordered[i + 1 :]]
