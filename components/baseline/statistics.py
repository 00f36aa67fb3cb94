"""Request features → TFDV statistics, the same way for the pipeline's baseline and for
`btmri monitor`'s served windows (Beam: scales like the rest of the pipeline).

A row is a dict of btmri.spec.REQUEST_FEATURES (data_prep/request_features.py); None
is a missing value. Every batch carries every feature column, so statistics of
traffic without images (request logs with --log-payload none) simply count the
image features as missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import apache_beam as beam
import pyarrow as pa

from btmri import spec
from data_prep.request_features import FEATURE_TYPES

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schema" / "request_features.pbtxt"
_ARROW_TYPES = {int: pa.int64(), float: pa.float32(), str: pa.binary()}


def load_schema(path: str | os.PathLike | None = None):
    """The request-feature schema (thresholds included) as a tensorflow_metadata Schema."""
    import tensorflow_data_validation as tfdv

    return tfdv.load_schema_text(str(path or SCHEMA_PATH))


def schema_text(path: str | os.PathLike | None = None) -> str:
    return Path(path or SCHEMA_PATH).read_text()


def to_record_batch(rows: list[dict]) -> pa.RecordBatch:
    """Rows → the Arrow batch TFDV reads: one list column per feature, null when missing."""
    columns = []
    for name in spec.REQUEST_FEATURES:
        kind = FEATURE_TYPES[name]
        values = [
            None if row.get(name) is None else [row[name].encode() if kind is str else row[name]]
            for row in rows
        ]
        columns.append(pa.array(values, type=pa.list_(_ARROW_TYPES[kind])))
    return pa.RecordBatch.from_arrays(columns, list(spec.REQUEST_FEATURES))


class RowsToStatistics(beam.PTransform):
    """PCollection of feature rows → one DatasetFeatureStatisticsList."""

    def __init__(self, schema, batch_size: int = 500):
        super().__init__()
        self.schema = schema
        self.batch_size = batch_size

    def expand(self, rows):
        import tensorflow_data_validation as tfdv

        return (
            rows
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self.batch_size)
            | "ToArrow" >> beam.Map(to_record_batch)
            | "Statistics" >> tfdv.GenerateStatistics(tfdv.StatsOptions(schema=self.schema))
        )


def statistics_count(statistics) -> int:
    """Rows counted in a DatasetFeatureStatisticsList (its first dataset)."""
    return int(statistics.datasets[0].num_examples) if statistics.datasets else 0


def statistics_of_rows(rows: list[dict], schema, path: str | os.PathLike, beam_args: list[str] | None = None):
    """TFDV statistics of rows held in memory (tools and tests), written to `path`."""
    import tensorflow_data_validation as tfdv
    from apache_beam.options.pipeline_options import PipelineOptions

    with beam.Pipeline(options=PipelineOptions(beam_args or [])) as pipeline:
        _ = (
            pipeline
            | "Rows" >> beam.Create(rows)
            | RowsToStatistics(schema)
            | "Write" >> tfdv.WriteStatisticsToBinaryFile(str(path))
        )
    return tfdv.load_stats_binary(str(path))


def rows_to_json(rows: list[dict]) -> str:
    """Feature rows as the baseline stores them (layout.BASELINE_ROWS_FILE): one list per
    feature, null for a missing value."""
    return json.dumps({name: [row.get(name) for row in rows] for name in spec.REQUEST_FEATURES})


def rows_from_json(text: str) -> list[dict]:
    columns = json.loads(text)
    count = max((len(v) for v in columns.values()), default=0)
    return [
        {name: columns.get(name, [None] * count)[i] for name in spec.REQUEST_FEATURES} for i in range(count)
    ]
