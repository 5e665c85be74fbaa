"""LeNet-5 (LeCun et al., 1998), as used in analog-AI studies on MNIST / Fashion-MNIST."""

from __future__ import annotations

from torch import Tensor, nn


class LeNet5(nn.Module):
    """Two 5x5 convolutions with max pooling, then three fully connected layers (28x28 input)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, classes),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
