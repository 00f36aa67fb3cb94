"""The quiet console: what a `btmri` command shows on the terminal, what only its log gets.

`quiet_environment()` runs before TensorFlow is imported (it only takes effect then):
TensorFlow's C++ start-up notes and errors (CUDA factory registration on machines
without a GPU), FutureWarnings and DeprecationWarnings from Google client libraries
(in every Beam worker too, which inherit the environment) and pip's chatter when TFX
installs the user-code wheel stay off the terminal. `-v` keeps them.
"""
from __future__ import annotations

import os
import warnings

QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",     # C++ INFO, WARNING and ERROR start-up lines (CUDA probing)
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
    "PIP_QUIET": "1",                # TFX's `pip install` of the user-code wheel
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "GRPC_VERBOSITY": "ERROR",
}
VERBOSE_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "0"}


def quiet_environment(verbose: bool = False) -> None:
    """Sets the variables above (values the user set win) and the same warning filters
    in this process."""
    for name, value in (VERBOSE_ENVIRONMENT if verbose else QUIET_ENVIRONMENT).items():
        os.environ.setdefault(name, value)
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
