#!/usr/bin/env bash
# Regenerates requirements/constraints.txt, the complete pinned lock used by the
# install command. Needs `uv` (pip install uv). Takes seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
uv pip compile "$here/requirements.in" --python-version 3.11 \
    --no-header --annotation-style line -o "$here/constraints.txt"
# tfx / ml-pipelines-sdk declare Requires-Python <3.11 although every library under
# them ships 3.11 wheels; they are pinned here and installed with
# --ignore-requires-python (the full pin above keeps pip from drifting).
printf 'tfx==1.16.0\nml-pipelines-sdk==1.16.0\n' >> "$here/constraints.txt"
