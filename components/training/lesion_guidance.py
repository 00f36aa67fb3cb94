"""Training that asks the classifier to find its evidence inside the tumour box.

For a global-average-pooled head the class score is the mean over positions of the
class activation map CAM_c = F · w_c (Zhou et al. 2016), so the decision itself,
not only an explanation of it, can be constrained: the lesion-evidence loss is the
share of the true class's positive CAM that lies outside the tumour's cells, for
training images whose box is known ("right for the right reasons", in the spirit of
Ross et al. 2017, but on the CAM instead of input gradients: no second-order
gradients, so it costs almost nothing on a CPU).

`LesionGuidedModel` wraps the classifier for `fit` only; the classifier is what is
exported. Data elements are (image, (label, lesion_cells)), lesion_cells [B, h, w, 1]
at the CAM's resolution or a multiple of it, all zero where no box is known.

A model that decides from explicit class evidence maps (models.CLASS_EVIDENCE_LAYER,
mri_resnet_evidence) has the spatial softmax of its true class's map constrained the
same way (class_map_evidence_loss).
"""

from __future__ import annotations

import tensorflow as tf
import tf_keras as keras

from components.training.gradcam import evidence_map
from components.training.models import CAM_LAYER, CLASS_EVIDENCE_LAYER, LOGITS_LAYER, view_at


def lesion_cells(masks: tf.Tensor, cam_size: int) -> tf.Tensor:
    """[B, H, W, 1] box masks (or cells of a finer grid) → [B, cam_size, cam_size, 1]: 1 for
    every CAM cell the box touches."""
    stride = masks.shape[1] // cam_size
    return tf.nn.max_pool2d(masks, stride, stride, "VALID")


def evidence_loss(features: tf.Tensor, kernel: tf.Tensor, labels: tf.Tensor, cells: tf.Tensor) -> tf.Tensor:
    """Mean over boxed images of (positive true-class CAM outside the box) / (all of it).

    features [B, h, w, C], kernel [C, K] (the logits layer), labels [B], cells [B, h', w', 1]
    (h' a multiple of h). Images without a box (cells all zero) contribute nothing; 0
    when no image has one."""
    features = tf.cast(features, tf.float32)
    weights = tf.gather(
        tf.transpose(tf.cast(kernel, tf.float32)), tf.cast(tf.reshape(labels, [-1]), tf.int32)
    )  # [B, C]
    return _mean_share_outside(tf.nn.relu(tf.einsum("bhwc,bc->bhw", features, weights)), cells)


def class_map_evidence_loss(maps: tf.Tensor, labels: tf.Tensor, cells: tf.Tensor) -> tf.Tensor:
    """For a model that tags its class evidence maps [B, h, w, K] (models.CLASS_EVIDENCE_LAYER):
    mean over boxed images of the share of the true class's spatial softmax outside the box.

    Not the positive share: those models' logits are pooled maps, so a shift common to
    every class changes no prediction, and a loss on the positive part is then met by
    pushing every map below zero. The spatial softmax is shift-invariant, and it is the
    map the `gradcam` signature shows (gradcam.evidence_map, exp(map - max))."""
    return _mean_share_outside(evidence_map(maps, labels)[..., 0], cells)


def _mean_share_outside(mass: tf.Tensor, cells: tf.Tensor) -> tf.Tensor:
    """mass [B, h, w] >= 0, cells [B, h', w', 1] (h' a multiple of h) → mean over boxed
    images of the share of the mass outside the cells the box touches."""
    cells = lesion_cells(cells, mass.shape[1])[..., 0]
    total = tf.reduce_sum(mass, axis=[1, 2])
    outside = tf.reduce_sum(mass * (1.0 - cells), axis=[1, 2])
    boxed = tf.cast(tf.reduce_any(cells > 0, axis=[1, 2]), tf.float32)
    per_image = tf.math.divide_no_nan(outside, total + 1e-6) * boxed
    return tf.math.divide_no_nan(tf.reduce_sum(per_image), tf.reduce_sum(boxed))


class LesionGuidedModel(keras.Model):
    """classifier + the lesion-evidence loss (weight 0 or no CAM layer: plain training).

    `distributed` (built under a tf.distribute strategy): `classification_loss` returns
    one loss per example, and each replica's gradient is taken of its share of the
    global-batch mean (sum of its per-example losses / global batch; the evidence and
    regularisation terms / replicas), so the gradients the strategy sums are the
    gradient of the mean over the global batch. The evidence term is then the mean of
    the replicas' means over their boxed images. The loss reported is the replica mean,
    as on one device. Not distributed: the single-device code, unchanged."""

    def __init__(
        self, classifier: keras.Model, classification_loss, evidence_weight: float, distributed: bool = False
    ):
        super().__init__(name=f"{classifier.name}_lesion_guided")
        self.classifier = classifier
        self.classification_loss = classification_loss
        self.distributed = bool(distributed)
        names = [layer.name for layer in classifier.layers]
        # The class evidence maps themselves, else the map a pooled linear head reads.
        self.map_layer = next((n for n in (CLASS_EVIDENCE_LAYER, CAM_LAYER) if n in names), None)
        self.evidence_weight = float(evidence_weight) if self.map_layer else 0.0
        self.with_maps = (
            keras.Model(classifier.inputs, [classifier.output, classifier.get_layer(self.map_layer).output])
            if self.evidence_weight
            else None
        )
        # What train_step and test_step run: the classifier itself, or a view of its layers
        # on smaller images (train_at).
        self._views = {classifier.input_shape[1]: (classifier, self.with_maps)}
        self._classifier_view, self._maps_view = classifier, self.with_maps
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.evidence_tracker = keras.metrics.Mean(name="evidence_loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="accuracy")

    def train_at(self, side: int) -> None:
        """Train and evaluate on [side, side] images from now on. A smaller side runs a
        view of the classifier: the same layers called on a smaller input, so weights,
        optimizer state and batch-norm statistics are shared and the classifier itself
        (full size) is what is exported. Only fully convolutional models can do this."""
        if side not in self._views:
            maps = None if self.with_maps is None else view_at(self.with_maps, side)
            self._views[side] = (view_at(self.classifier, side), maps)
        self._classifier_view, self._maps_view = self._views[side]
        # Keras keeps its traced step functions; the next fit or evaluate traces the view's.
        self.train_function = self.test_function = self.predict_function = None

    @property
    def metrics(self):
        return [self.loss_tracker, self.evidence_tracker, self.accuracy]

    def call(self, images, training=False):
        return self.classifier(images, training=training)

    def _evidence(self, maps, labels, cells):
        if self.map_layer == CLASS_EVIDENCE_LAYER:
            return class_map_evidence_loss(maps, labels, cells)
        return evidence_loss(maps, self.classifier.get_layer(LOGITS_LAYER).kernel, labels, cells)

    def _step_losses(self, data, training: bool):
        images, (labels, cells) = data
        evidence = tf.constant(0.0)
        if self._maps_view is None:
            probs = self._classifier_view(images, training=training)
            loss = self.classification_loss(labels, probs)
        else:
            probs, features = self._maps_view(images, training=training)
            evidence = self._evidence(features, labels, cells)
            loss = self.classification_loss(labels, probs) + self.evidence_weight * evidence
        if self.classifier.losses:
            loss = loss + tf.add_n(self.classifier.losses)
        return loss, evidence, labels, probs

    def _distributed_losses(self, data, training: bool):
        """(reported loss, loss to differentiate, evidence, labels, probabilities) on one replica."""
        images, (labels, cells) = data
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        evidence = tf.constant(0.0)
        rest = tf.constant(0.0)
        if self._maps_view is None:
            probs = self._classifier_view(images, training=training)
        else:
            probs, features = self._maps_view(images, training=training)
            evidence = self._evidence(features, labels, cells)
            rest = self.evidence_weight * evidence
        if self.classifier.losses:
            rest = rest + tf.add_n(self.classifier.losses)
        per_example = tf.reshape(tf.cast(self.classification_loss(labels, probs), tf.float32), [-1])
        reported = tf.reduce_mean(per_example) + rest
        scaled = tf.nn.compute_average_loss(per_example) + rest / replicas
        return reported, scaled, evidence, labels, probs

    def _track(self, loss, evidence, labels, probs):
        self.loss_tracker.update_state(loss)
        self.evidence_tracker.update_state(evidence)
        self.accuracy.update_state(labels, probs)
        return {m.name: m.result() for m in self.metrics}

    def train_step(self, data):
        if self.distributed:
            with tf.GradientTape() as tape:
                loss, scaled, evidence, labels, probs = self._distributed_losses(data, training=True)
            variables = self.classifier.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
            return self._track(loss, evidence, labels, probs)
        with tf.GradientTape() as tape:
            loss, evidence, labels, probs = self._step_losses(data, training=True)
        variables = self.classifier.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return self._track(loss, evidence, labels, probs)

    def test_step(self, data):
        if self.distributed:
            loss, _, evidence, labels, probs = self._distributed_losses(data, training=False)
            return self._track(loss, evidence, labels, probs)
        return self._track(*self._step_losses(data, training=False))
