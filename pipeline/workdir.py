"""The local work folder of `btmri run`: which data to (re)make and which to reuse.

Synthetic data is generated once per set of generator arguments (its marker file,
synth.json, records them). Prepared TFRecords live in a folder named by the
fingerprint of their input (every image's path, size and mtime) and the prepare
arguments: a dataset prepared once is reused as it is (identical TFRecords
rewritten would defeat TFX's cache), and two datasets never share a folder.
`data/prepared/current` points at the one the last run used. Folders follow
btmri.layout.RunLayout.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from btmri.documents import Manifest, write_atomic
from btmri.layout import SYNTH_MARKER_FILE, RunLayout

KEY_LENGTH = 16  # hex digits of the fingerprint naming a prepared-data folder


@dataclass
class PreparedData:
    path: str  # data/prepared/<key>
    manifest: Manifest
    reused: bool  # True: the folder already held this data, nothing was written


def synthesize_if_missing(out: str, per_class: int, test_per_class: int, seed: int) -> bool:
    """Writes the synthetic phantom dataset unless `out` holds it already; True if reused."""
    from data_prep.synth import BOXES_DIR, generate_dataset

    marker = Path(out) / SYNTH_MARKER_FILE
    wanted = {"per_class": per_class, "test_per_class": test_per_class, "seed": seed}
    # Datasets written before the generator wrote boxes/ are made again.
    if (
        marker.is_file()
        and json.loads(marker.read_text()).get("arguments") == wanted
        and (Path(out) / BOXES_DIR).is_dir()
    ):
        return True
    summary = generate_dataset(out, **wanted)
    write_atomic(marker, json.dumps({"arguments": wanted, "summary": summary}, indent=1))
    return False


def dataset_key(input_fingerprint: str, arguments: dict) -> str:
    """The name of a prepared-data folder: input fingerprint + prepare arguments."""
    text = json.dumps({"input": input_fingerprint, "arguments": arguments}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:KEY_LENGTH]


def prepare_if_changed(data_dir: str, layout: RunLayout, feedback=None, **prepare_kw) -> PreparedData:
    """The prepared data of `data_dir` with these arguments (and `feedback`, a
    data_prep.feedback.FeedbackSet: the site's reviewed images): reused when its folder
    exists and is complete, else written. Points data/prepared/current at it."""
    from data_prep.prepare import PrepareOptions, input_fingerprint, prepare

    arguments = PrepareOptions(data_dir=data_dir, out_dir="", **prepare_kw).arguments()
    arguments.pop("out_dir")
    if feedback is not None:  # only then: the keys of data prepared without feedback stay as they were
        arguments["feedback"] = feedback.fingerprint()
    out = layout.prepared_data(dataset_key(input_fingerprint(data_dir), arguments))
    old = Manifest.read_if_present(out)  # written last: its presence means complete
    if old is not None:
        prepared = PreparedData(out, old, reused=True)
    else:
        prepared = PreparedData(
            out,
            prepare(PrepareOptions(data_dir=data_dir, out_dir=out, **prepare_kw), feedback),
            reused=False,
        )
    _point_current(layout, out)
    return prepared


def _point_current(layout: RunLayout, target: str) -> None:
    link = Path(layout.current_prepared_data)
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(Path(target).name, tmp)
    os.replace(tmp, link)  # atomic: readers see the old or the new folder
