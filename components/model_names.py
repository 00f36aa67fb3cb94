"""Names of the selectable models: re-exported from btmri/spec.py (their one home);
components/training/models.py builds them."""

from btmri.spec import DEFAULT_MODEL, MODEL_NAMES, PRETRAINABLE  # noqa: F401
