"""Keras models, selectable by name.

Every model maps IMAGE_XF float32 [N, 224, 224, 1] in [0, 1] to class
probabilities [N, 4], with named layers the exported signatures and the training rely on:
GRADCAM_LAYER (the convolutional feature map Grad-CAM explains) and LOGITS_LAYER
(pre-softmax scores, used for Grad-CAM and temperature scaling); models with a
global-average-pooled head also tag CAM_LAYER, the map it pools. A model may also
tag GRADCAM_FINE_LAYER, an early high-resolution map that sharpens the heatmap
(components/training/gradcam.py).

Keras 2 (`tf_keras`), so the model and TFT's transform layer share one Keras.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf
import tf_keras as keras
from tf_keras import layers

from btmri.spec import DEFAULT_MODEL, MODEL_NAMES, PRETRAINABLE
from components.transform.preprocessing import CHANNELS, IMAGE_SIZE, IMAGE_XF
from btmri.spec import NUM_CLASSES

GRADCAM_LAYER = "gradcam_features"
CAM_LAYER = "cam_features"  # the map global average pooling reads (lesion_guidance.py)
GRADCAM_FINE_LAYER = "gradcam_fine_features"
# Models that decide from a map of local class evidence tag it [N, h, w, K]: the
# lesion-evidence loss constrains it directly (lesion_guidance.py).
CLASS_EVIDENCE_LAYER = "class_evidence"
# The pooled features the abstention detector reads, where they are not the logits' input.
PENULTIMATE_LAYER = "penultimate_features"
# The 14x14 feature map the abstention detector reads (pooled), where GRADCAM_LAYER is
# not a feature map but class evidence (components/training/abstention.py).
GRID_FEATURES_LAYER = "grid_features"
LOGITS_LAYER = "logits"
PROBABILITIES_LAYER = "probabilities"


def _inputs() -> keras.Input:
    return keras.Input(shape=(IMAGE_SIZE, IMAGE_SIZE, CHANNELS), name=IMAGE_XF)


def _head(features, inputs, name: str, dropout: float, tag_gradcam: bool = True) -> keras.Model:
    if tag_gradcam:
        features = layers.Activation("linear", name=GRADCAM_LAYER)(features)
    features = layers.Activation("linear", name=CAM_LAYER)(features)
    x = layers.GlobalAveragePooling2D()(features)
    x = layers.Dropout(dropout)(x)
    logits = layers.Dense(NUM_CLASSES, name=LOGITS_LAYER)(x)
    probs = layers.Activation("softmax", dtype="float32", name=PROBABILITIES_LAYER)(logits)
    return keras.Model(inputs, probs, name=name)


def seed_cnn() -> keras.Model:
    """The seed's CNN: 3x (Conv2D + MaxPool) → Flatten → Dense(128) → Dropout(0.5) → softmax.

    Kept as the baseline row of the accuracy table; ~6.4M parameters, almost all in
    the Dense layer after Flatten.
    """
    inputs = _inputs()
    x = inputs
    for filters in (32, 32, 64):
        x = layers.Conv2D(filters, 3, padding="same", activation="relu")(x)
        x = layers.MaxPooling2D()(x)
    features = layers.Activation("linear", name=GRADCAM_LAYER)(x)
    x = layers.Flatten()(features)
    x = layers.Dense(128, activation="relu")(x)
    x = layers.Dropout(0.5)(x)
    logits = layers.Dense(NUM_CLASSES, name=LOGITS_LAYER)(x)
    probs = layers.Activation("softmax", dtype="float32", name=PROBABILITIES_LAYER)(logits)
    return keras.Model(inputs, probs, name="seed_cnn")


# Batch-norm moving statistics follow the data faster than Keras' default 0.99:
# with a few hundred steps per run the default leaves them stale at eval time.
BN_MOMENTUM = 0.9


def _bn():
    return layers.BatchNormalization(momentum=BN_MOMENTUM)


def _residual_block(x, filters: int, stride: int):
    """Basic block: conv-BN-ReLU-conv-BN + shortcut, ReLU."""
    shortcut = x
    if stride != 1 or x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False)(x)
        shortcut = _bn()(shortcut)
    x = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False)(x)
    x = _bn()(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
    x = _bn()(x)
    return layers.ReLU()(layers.Add()([shortcut, x]))


def _resnet_stages(inputs, widths: tuple[int, ...], tags: dict[int, str]) -> list:
    """Stem (stride-2 conv + max-pool: 224 → 56) and one residual block per width, the
    first at stride 1, the rest at stride 2; returns every stage's output. `tags`: stage
    index → layer name, a linear layer on that stage's output (in line, so the later
    stages read it)."""
    x = layers.Conv2D(widths[0], 5, strides=2, padding="same", use_bias=False)(inputs)
    x = _bn()(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    stages = []
    for i, filters in enumerate(widths):
        x = _residual_block(x, filters, stride=1 if i == 0 else 2)
        if i in tags:
            x = layers.Activation("linear", name=tags[i])(x)
        stages.append(x)
    return stages


def mri_resnet(widths: tuple[int, ...] = (32, 64, 128, 256), dropout: float = 0.3) -> keras.Model:
    """A small ResNet for CPU training from scratch (the default before mri_resnet_evidence).

    Early downsampling (stride-2 stem + max-pool: 224 → 56) puts the compute where
    the features are; batch norm and residual blocks train fast from scratch;
    global average pooling instead of Flatten → Dense keeps it ~1.2M parameters
    and makes Grad-CAM maps meaningful (from the 14x14 stage, sharpened by the
    56x56 one; see below and components/training/gradcam.py).
    """
    inputs = _inputs()
    stages = _resnet_stages(
        inputs,
        widths,
        # 56x56: sharpens the heatmap to lesion scale. Grad-CAM from the 14x14 stage: the
        # last (7x7) map puts every peak on a 32-px grid, coarser than a pituitary lesion;
        # gradients still flow through the last stage, so the map explains the same decision.
        {0: GRADCAM_FINE_LAYER, len(widths) - 2: GRADCAM_LAYER},
    )
    return _head(stages[-1], inputs, "mri_resnet", dropout, tag_gradcam=False)


@keras.utils.register_keras_serializable(package="btmri")
class TopKMeanPooling(layers.Layer):
    """[N, h, w, K] evidence maps → [N, K]: the mean of each map's k highest cells.

    A class score that is the mean over the whole image (global average pooling) can
    be made of context everywhere; the mean of the few highest cells is the strength
    of the best local evidence, and the only cells a gradient reaches are those."""

    def __init__(self, k: int, **kwargs):
        super().__init__(**kwargs)
        self.k = int(k)

    def call(self, maps):
        maps = tf.cast(maps, tf.float32)
        flat = tf.transpose(tf.reshape(maps, [tf.shape(maps)[0], -1, maps.shape[-1]]), [0, 2, 1])
        return tf.reduce_mean(tf.math.top_k(flat, k=self.k, sorted=False).values, axis=-1)

    def get_config(self):
        return {**super().get_config(), "k": self.k}


# Cells pooled per class: about the area of a typical tumour box (3 % of the
# 196-cell map) after the head crop enlarges it.
EVIDENCE_TOP_K = 6


def mri_resnet_evidence(
    widths: tuple[int, ...] = (32, 64, 128, 256), fused: int = 96, dropout: float = 0.3
) -> keras.Model:
    """mri_resnet's backbone, deciding from local evidence: the 14x14 stage and the
    (upsampled) 7x7 stage are fused into a 14x14 map, a 1x1 convolution turns it into
    one evidence map per class, and each class score is the mean of its map's
    EVIDENCE_TOP_K highest cells (TopKMeanPooling). "Tumour" then means "some place
    looks like a tumour": with the lesion removed the evidence has nowhere to come
    from, the map is what the lesion-evidence loss constrains, and the `gradcam`
    signature's coarse map is that evidence map (gradcam.evidence_map), 16 px per cell.
    """
    inputs = _inputs()
    n = len(widths)
    *_, grid, last = _resnet_stages(
        inputs, widths, {0: GRADCAM_FINE_LAYER, n - 2: GRID_FEATURES_LAYER, n - 1: PENULTIMATE_LAYER}
    )
    lateral = layers.Conv2D(fused, 1, use_bias=False)(grid)
    top = layers.UpSampling2D(2, interpolation="bilinear")(layers.Conv2D(fused, 1, use_bias=False)(last))
    x = layers.ReLU()(_bn()(layers.Add()([lateral, top])))
    x = layers.Conv2D(fused, 3, padding="same", use_bias=False)(x)
    x = layers.ReLU()(_bn()(x))
    x = layers.Dropout(dropout)(x)
    maps = layers.Conv2D(NUM_CLASSES, 1, name=CLASS_EVIDENCE_LAYER)(x)
    maps = layers.Activation("linear", name=GRADCAM_LAYER)(maps)
    logits = TopKMeanPooling(EVIDENCE_TOP_K, name=LOGITS_LAYER)(maps)
    probs = layers.Activation("softmax", dtype="float32", name=PROBABILITIES_LAYER)(logits)
    return keras.Model(inputs, probs, name="mri_resnet_evidence")


def view_at(model: keras.Model, side: int) -> keras.Model:
    """The same layers (so the same weights and batch-norm statistics) called on
    [side, side] images: how a fully convolutional model trains on smaller images
    (LesionGuidedModel.train_at). Nothing is copied; only a new input is wired in."""
    inputs = keras.Input((side, side, model.input_shape[-1]), name=model.input.name.split(":")[0])
    return keras.models.clone_model(model, input_tensors=inputs, clone_function=lambda layer: layer)


def _application(builder: Callable, preprocess: Callable, name: str, weights: str | None) -> keras.Model:
    """A keras.applications backbone on our 1-channel [0, 1] input (gray → RGB, 0..255)."""
    inputs = _inputs()
    x = layers.Concatenate()([inputs, inputs, inputs])
    x = layers.Lambda(lambda t: preprocess(t * 255.0), name=f"{name}_preprocess")(x)
    backbone = builder(include_top=False, weights=weights, input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3))
    return _head(backbone(x), inputs, name, dropout=0.3)


def resnet50(weights: str | None = None) -> keras.Model:
    """Opt-in transfer learning (weights='imagenet' needs internet access)."""
    from tf_keras.applications import resnet50 as app

    return _application(app.ResNet50, app.preprocess_input, "resnet50", weights)


def efficientnetb0(weights: str | None = None) -> keras.Model:
    """Opt-in transfer learning (weights='imagenet' needs internet access)."""
    from tf_keras.applications import efficientnet as app

    return _application(app.EfficientNetB0, app.preprocess_input, "efficientnetb0", weights)


MODELS: dict[str, Callable[..., keras.Model]] = {
    "seed_cnn": seed_cnn,
    "mri_resnet": mri_resnet,
    "mri_resnet_evidence": mri_resnet_evidence,
    "resnet50": resnet50,
    "efficientnetb0": efficientnetb0,
}
assert set(MODELS) == set(MODEL_NAMES) and DEFAULT_MODEL in MODELS


def build_model(name: str, weights: str | None = None) -> keras.Model:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    if weights is not None and name not in PRETRAINABLE:
        raise ValueError(f"--weights applies to {', '.join(PRETRAINABLE)}, not {name}")
    return MODELS[name](weights=weights) if name in PRETRAINABLE else MODELS[name]()
