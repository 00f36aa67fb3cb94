"""Names of the selectable models, without importing TensorFlow (the CLI's help
and argument checks need them; components/training/models.py builds them)."""
MODEL_NAMES = ("mri_resnet", "seed_cnn", "resnet50", "efficientnetb0")
DEFAULT_MODEL = "mri_resnet"
PRETRAINABLE = ("resnet50", "efficientnetb0")  # accept --weights imagenet
