# Pipeline image for Kubeflow Pipelines / Vertex AI / Dataflow workers: the official
# TFX image of the pinned release, plus this package (its module code is referenced by
# import path in the compiled spec, see pipeline/kubeflow_runner.py).
FROM tensorflow/tfx:1.16.0

WORKDIR /opt/brain-tumor-mri

# TFX, TF, TFT, TFMA and Beam come with the base image; add only what it lacks,
# at the versions of the project's lock.
COPY requirements/constraints.txt requirements/constraints.txt
RUN pip install --no-cache-dir -c requirements/constraints.txt \
        opencv-python-headless pydicom tqdm tf-keras

COPY setup.py README.md ./
COPY btmri btmri
COPY data_prep data_prep
COPY components components
COPY pipeline pipeline
COPY serving serving
RUN pip install --no-cache-dir --no-deps .

# Model, transform layer and TFMA must share Keras 2 (see btmri/__init__.py).
ENV TF_USE_LEGACY_KERAS=1
