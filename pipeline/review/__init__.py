"""`btmri review`: a person labels what the served model was asked (docs/review.md).

    cases.py    the request log → the cases to review (abstentions first, then a sample)
    store.py    the reviews: SQLite by default, PostgreSQL by URL; history kept
    gradcam.py  the Grad-CAM overlay of a case: logged, or computed lazily and cached
    server.py   the local review page (HTTP): local-only, escaped, token-checked
    export.py   reviewed images as class folders + a provenance CSV
    cli.py      the subcommand's flags and what it prints

Only cli.py's `register` runs at `btmri --help`; TensorFlow is imported when a log is read.
"""
