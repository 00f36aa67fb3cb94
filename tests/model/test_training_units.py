"""Training helpers without a pipeline: augmentation geometry, compute dtype choice, and the
float32 copy the Trainer exports after mixed-precision training."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest

import data_prep  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from components.training import augment, compute_dtype
from btmri.spec import DEFAULT_MODEL, PRETRAINABLE
from components.training.models import GRADCAM_LAYER, LOGITS_LAYER, build_model
from components.training.trainer import _float32_copy

SIZE = 65
CENTRE = 32  # (SIZE - 1) / 2: a whole pixel, so every expected position below is exact


def _dot(x: int, y: int) -> tf.Tensor:
    image = np.zeros((1, SIZE, SIZE, 1), np.float32)
    image[0, y - 1 : y + 2, x - 1 : x + 2, 0] = 1.0
    return tf.constant(image)


def _centroid(image: tf.Tensor) -> tuple[float, float]:
    pixels = image.numpy()[0, ..., 0]
    ys, xs = np.nonzero(pixels > 0.05)
    weights = pixels[ys, xs]
    return float(np.average(xs, weights=weights)), float(np.average(ys, weights=weights))


def _move(x, y, theta=0.0, scale=1.0, tx=0.0, ty=0.0, flip=1.0):
    one = lambda v: tf.constant([float(v)])  # noqa: E731
    transforms = augment.inverse_affine(
        one(theta), one(scale), one(tx), one(ty), one(flip), float(SIZE), float(SIZE)
    )
    return _centroid(augment.warp(_dot(x, y), transforms))


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, (CENTRE + 16, CENTRE)),  # identity
        ({"tx": 5, "ty": -7}, (CENTRE + 21, CENTRE - 7)),  # shift right and up
        ({"flip": -1.0}, (CENTRE - 16, CENTRE)),  # mirror left-right
        ({"scale": 1.5}, (CENTRE + 24, CENTRE)),  # zoom about the centre
        ({"theta": math.pi / 2}, (CENTRE, CENTRE - 16)),  # right → up: counter-clockwise
        ({"theta": math.pi / 2, "flip": -1.0}, (CENTRE, CENTRE + 16)),  # mirrored first, then turned
    ],
)
def test_inverse_affine_moves_a_dot_where_the_parameters_say(kwargs, expected):
    assert _move(CENTRE + 16, CENTRE, **kwargs) == pytest.approx(expected, abs=0.3)


def test_augment_batch_keeps_shape_range_and_varies_per_image():
    rng = np.random.default_rng(0)
    images = tf.constant(rng.uniform(0, 1, (8, SIZE, SIZE, 1)).astype(np.float32))
    out = augment.augment_batch(images, seed=3)
    assert out.shape == images.shape and out.dtype == tf.float32
    assert float(tf.reduce_min(out)) >= 0.0 and float(tf.reduce_max(out)) <= 1.0
    same = augment.augment_batch(tf.repeat(images[:1], 8, axis=0), seed=3).numpy()
    assert np.abs(same[0] - same[1:]).mean() > 0.01  # each image draws its own transform


def test_augment_batch_with_every_range_at_zero_is_the_identity():
    rng = np.random.default_rng(1)
    images = tf.constant(rng.uniform(0, 1, (4, SIZE, SIZE, 1)).astype(np.float32))
    still = augment.AugmentConfig(max_rotation_deg=0, max_zoom=0, max_shift=0, max_contrast=0, flip=False)
    np.testing.assert_allclose(augment.augment_batch(images, still).numpy(), images.numpy(), atol=1e-5)


def test_augment_batch_keeps_static_shapes_in_a_graph():
    spec = tf.TensorSpec([None, 224, 224, 1], tf.float32)
    traced = tf.function(augment.augment_batch).get_concrete_function(spec)
    assert traced.structured_outputs.shape.as_list() == [None, 224, 224, 1]


def test_cpu_bf16_detection_reads_the_flags(tmp_path):
    with_bf16 = tmp_path / "with"
    with_bf16.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16\n")
    without = tmp_path / "without"
    without.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert compute_dtype.cpu_has_bf16(str(with_bf16))
    assert not compute_dtype.cpu_has_bf16(str(without))
    assert not compute_dtype.cpu_has_bf16(str(tmp_path / "missing"))
    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert compute_dtype.instruction_set(str(with_bf16)) == "AVX-512 BF16"
    assert compute_dtype.instruction_set(str(without)) == "AVX-512"
    assert compute_dtype.instruction_set(str(avx2)) == "AVX2"
    assert compute_dtype.instruction_set(str(tmp_path / "missing")) is None


def _last_line_of_fresh_process(code: str, **env_overrides) -> str:
    """The last line a new interpreter prints running `code`, with no oneDNN setting of
    its own unless `env_overrides` give one."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "BTMRI_SET_ONEDNN")}
    env.update(env_overrides, TF_CPP_MIN_LOG_LEVEL="3")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return done.stdout.split("\n")[-2]


def _onednn_in_fresh_process(first_import: str = "data_prep", **env_overrides) -> str:
    """What a new interpreter reports after importing `first_import`, then TensorFlow:
    the variable (or '-') and whether TensorFlow runs oneDNN."""
    code = (
        f"import os, {first_import}\n"
        "from components.training import compute_dtype\n"
        "print(os.environ.get('TF_ENABLE_ONEDNN_OPTS', '-'), compute_dtype.onednn_enabled())"
    )
    return _last_line_of_fresh_process(code, **env_overrides)


def _tensorflow_default_onednn() -> str:
    """TensorFlow's own choice on this CPU, in a process that never imports the project."""
    code = "from tensorflow.python.util import _pywrap_util_port as p; print(bool(p.IsMklEnabled()))"
    return _last_line_of_fresh_process(code)


def test_importing_the_project_turns_onednn_kernels_on_unless_the_user_chose():
    # TensorFlow alone leaves oneDNN off on CPUs without AVX-512 VNNI/BF16 or AMX.
    assert _onednn_in_fresh_process() == "1 True"
    assert _onednn_in_fresh_process(TF_ENABLE_ONEDNN_OPTS="0") == "0 False"


def test_the_btmri_command_line_keeps_onednn_on_for_training():
    # `btmri run` builds the parser of every subcommand, the model server's included,
    # before the pipeline loads TensorFlow: that must not hand oneDNN back.
    code_first = "pipeline.cli; pipeline.cli.build_parser(); import serving"
    assert _onednn_in_fresh_process(code_first) == "1 True"


def test_the_model_server_leaves_onednn_to_tensorflow_unless_the_user_chose():
    default = _tensorflow_default_onednn()
    server = "serving.cli; serving.cli.server_process_settings()"
    assert _onednn_in_fresh_process(server) == f"- {default}"
    # A server started by a pipeline process inherits the project's setting, marked.
    inherited = {"TF_ENABLE_ONEDNN_OPTS": "1", "BTMRI_SET_ONEDNN": "1"}
    assert _onednn_in_fresh_process(server, **inherited) == f"- {default}"
    assert _onednn_in_fresh_process(server, TF_ENABLE_ONEDNN_OPTS="1") == "1 True"


def test_the_infra_validators_server_can_be_told_the_kernels_to_use(monkeypatch):
    from serving.process import ServerProcess

    # Under the pipeline, the project's choice, marked as the project's.
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    monkeypatch.setenv("BTMRI_SET_ONEDNN", "1")
    default = ServerProcess(None).child_environment()
    assert default["BTMRI_SET_ONEDNN"] == "1"  # the server hands it back to TensorFlow
    for onednn, value in ((True, "1"), (False, "0")):
        env = ServerProcess(None, onednn=onednn).child_environment()
        assert env["TF_ENABLE_ONEDNN_OPTS"] == value and "BTMRI_SET_ONEDNN" not in env
        # ... which a server keeps, as it keeps a user's choice.
        on = _onednn_in_fresh_process(
            "serving.cli; serving.cli.server_process_settings()", TF_ENABLE_ONEDNN_OPTS=value
        )
        assert on == f"{value} {onednn}"


def test_compute_dtype_settings_map_to_keras_policies():
    assert compute_dtype.keras_policy("float32") == "float32"
    assert compute_dtype.keras_policy("bfloat16") == "mixed_bfloat16"
    assert compute_dtype.keras_policy("auto") in ("float32", "mixed_bfloat16")
    with pytest.raises(ValueError, match="compute dtype must be one of"):
        compute_dtype.keras_policy("float16")


def test_float32_copy_of_a_mixed_precision_model_predicts_the_same_in_float32():
    with compute_dtype.keras_policy_scope("mixed_bfloat16"):
        mixed = build_model(DEFAULT_MODEL)
    assert mixed.get_layer("logits").compute_dtype == "bfloat16"
    copy = _float32_copy(mixed, DEFAULT_MODEL)
    assert all(layer.compute_dtype == "float32" for layer in copy.layers if hasattr(layer, "compute_dtype"))
    images = np.random.default_rng(2).uniform(0, 1, (4, 224, 224, 1)).astype(np.float32)
    mixed_probs = mixed(images, training=False).numpy()
    copy_probs = copy(images, training=False).numpy()
    assert copy_probs.dtype == np.float32
    # Same weights: the two differ only by bfloat16 rounding (about 3 significant digits).
    np.testing.assert_allclose(copy_probs, mixed_probs, atol=0.05)
    assert np.array_equal(copy_probs.argmax(1), mixed_probs.argmax(1))


@pytest.mark.parametrize("name", PRETRAINABLE)
def test_transfer_learning_backbones_build_offline_with_random_weights(name):
    """`--model resnet50|efficientnetb0 --weights imagenet` is the opt-in path for users
    with internet access; here only weights=None can be exercised (no downloads)."""
    model = build_model(name, weights=None)
    assert model.get_layer(GRADCAM_LAYER) is not None and model.get_layer(LOGITS_LAYER) is not None
    probs = model(
        np.random.default_rng(3).uniform(0, 1, (2, 224, 224, 1)).astype(np.float32), training=False
    ).numpy()
    assert probs.shape == (2, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_pretrained_weights_are_refused_for_models_trained_from_scratch():
    with pytest.raises(ValueError, match="--weights applies to"):
        build_model("mri_resnet", weights="imagenet")
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vgg16")
