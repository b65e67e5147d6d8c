"""Training: a trainer that consumes any iterator of activation batches."""

from .config import TrainConfig, lr_factor, original_defaults
from .trainer import Trainer, TrainingError, train_sae

__all__ = ["TrainConfig", "Trainer", "TrainingError", "lr_factor", "original_defaults", "train_sae"]
