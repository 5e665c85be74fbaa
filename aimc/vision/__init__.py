"""Small vision data and models for studies: IDX (MNIST / Fashion-MNIST) loader, LeNet-5."""

from .idx import load_idx_split, read_idx
from .models import LeNet5

__all__ = ["LeNet5", "load_idx_split", "read_idx"]
