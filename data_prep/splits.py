"""Deterministic, stratified train/eval assignment from file content.

Within each class, files are ordered by sha256(seed, md5 of the file) and the
first round(n * eval_fraction) go to eval. The order depends only on file
contents and the seed, so the same data gives the same split on any machine, in
any listing order; byte-identical copies (same class) always share a split, so
exact duplicates never leak from train into eval.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict

from btmri.spec import EVAL_SPLIT, TRAIN_SPLIT


def split_key(md5: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{md5}".encode()).hexdigest()


def assign_train_eval(items: list[tuple[str, int, str]], eval_fraction: float, seed: int) -> dict[str, str]:
    """items: (source, label, md5). Returns source -> 'train' | 'eval'."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError(f"eval fraction must be in [0, 1), got {eval_fraction}")
    by_class: dict[int, list[tuple[str, str]]] = defaultdict(list)
    for source, label, md5 in items:
        by_class[label].append((source, md5))
    assignment: dict[str, str] = {}
    for members in by_class.values():
        # Copies sort next to each other (same key); the source breaks ties stably.
        members.sort(key=lambda m: (split_key(m[1], seed), m[0]))
        n_eval = round(len(members) * eval_fraction)
        if n_eval and n_eval < len(members):
            # never cut a group of identical files in two
            cut_md5 = members[n_eval - 1][1]
            while n_eval < len(members) and members[n_eval][1] == cut_md5:
                n_eval += 1
        for i, (source, _) in enumerate(members):
            assignment[source] = EVAL_SPLIT if i < n_eval else TRAIN_SPLIT
    return assignment
