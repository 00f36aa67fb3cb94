"""The local work folder of `btmri run`: which data to (re)make and which to reuse.

Synthetic data is generated once per set of generator arguments (its marker file,
synth.json, records them); prepared TFRecords are rewritten only when the images or
the prepare arguments changed, since identical TFRecords rewritten would defeat
TFX's cache. Folders follow btmri.layout.RunLayout.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from btmri.documents import Manifest, write_atomic
from btmri.layout import SYNTH_MARKER_FILE


@dataclass
class PreparedData:
    manifest: Manifest
    reused: bool              # True: the folder already held this data, nothing was written


def synthesize_if_missing(out: str, per_class: int, test_per_class: int, seed: int) -> bool:
    """Writes the synthetic phantom dataset unless `out` holds it already; True if reused."""
    from data_prep.synth import BOXES_DIR, generate_dataset

    marker = Path(out) / SYNTH_MARKER_FILE
    wanted = {"per_class": per_class, "test_per_class": test_per_class, "seed": seed}
    # Datasets written before the generator wrote boxes/ are made again.
    if (marker.is_file() and json.loads(marker.read_text()).get("arguments") == wanted
            and (Path(out) / BOXES_DIR).is_dir()):
        return True
    summary = generate_dataset(out, **wanted)
    write_atomic(marker, json.dumps({"arguments": wanted, "summary": summary}, indent=1))
    return False


def prepare_if_changed(data_dir: str, out: str, **prepare_kw) -> PreparedData:
    """Runs `prepare` unless `out` already holds the same images prepared with the
    same arguments."""
    from data_prep.prepare import PrepareOptions, input_fingerprint, prepare

    opts = PrepareOptions(data_dir=data_dir, out_dir=out, **prepare_kw)
    old = Manifest.read_if_present(out)
    if (old is not None and old.arguments == opts.arguments()
            and old.input_fingerprint == input_fingerprint(data_dir)):
        return PreparedData(old, reused=True)
    return PreparedData(prepare(opts), reused=False)
