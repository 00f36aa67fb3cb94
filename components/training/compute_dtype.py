"""Training compute dtype: float32, or mixed bfloat16 where the CPU computes it natively.

On a CPU with AVX512-BF16 (or AMX) oneDNN runs bfloat16 convolutions about twice
as fast as float32 (benchmarks/training_cost.py measures the matmul peak of both). Variables
stay float32 under Keras' mixed policy, and the exported model is rebuilt in
float32, so serving never depends on the training machine's CPU.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from btmri.spec import COMPUTE_DTYPES

_BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}


# The widest vector extension a CPU has, widest first: what a timing was measured on.
_INSTRUCTION_SETS = (
    (_BF16_CPU_FLAGS, "AVX-512 BF16"),
    ({"avx512f"}, "AVX-512"),
    ({"avx2"}, "AVX2"),
    ({"avx"}, "AVX"),
)


def cpuinfo_field(key: str, cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """The first processor's `key` line ('flags', 'model name'); None where missing."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(key):
            return line.split(":", 1)[1].strip()
    return None


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> set[str]:
    """The first processor's feature flags; empty where /proc/cpuinfo is missing."""
    return set((cpuinfo_field("flags", cpuinfo) or "").split())


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    return bool(_BF16_CPU_FLAGS & cpu_flags(cpuinfo))


def instruction_set(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    """'AVX-512 BF16', 'AVX-512', 'AVX2' or 'AVX': the CPU's widest; None if unknown.
    A training epoch on AVX2 costs about three times one on AVX-512 BF16
    (docs/experiments.md), so every timing names it."""
    flags = cpu_flags(cpuinfo)
    return next((name for needed, name in _INSTRUCTION_SETS if needed & flags), None)


def keras_policy(setting: str) -> str:
    """'auto' | 'float32' | 'bfloat16' → a Keras mixed-precision policy name."""
    if setting not in COMPUTE_DTYPES:
        raise ValueError(f"compute dtype must be one of {', '.join(COMPUTE_DTYPES)}, not {setting!r}")
    if setting == "auto":
        import tensorflow as tf  # here: importing this module stays TF-free

        # GPUs are left to float32 here: their fast path is float16 with loss scaling.
        use_bf16 = cpu_has_bf16() and not tf.config.list_physical_devices("GPU")
        setting = "bfloat16" if use_bf16 else "float32"
    return "mixed_bfloat16" if setting == "bfloat16" else "float32"


def onednn_enabled() -> bool:
    """Whether TensorFlow runs its oneDNN CPU kernels in this process (btmri's
    ONEDNN_SWITCH turns them on where TensorFlow would not by default)."""
    from tensorflow.python.util import _pywrap_util_port  # TF's own flag reader

    return bool(_pywrap_util_port.IsMklEnabled())


@contextlib.contextmanager
def keras_policy_scope(policy: str):
    """Layers built inside compute under `policy`; the global policy is float32 again
    afterwards, so nothing built later (the float32 export copy) inherits it."""
    import tf_keras as keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")
