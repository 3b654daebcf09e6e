"""sota_ablate: an ablation suite for fastbook chapter 7 (xresnet on Imagenette), tracked in MLflow."""

__version__ = "0.1.0"
