"""Importable model factories for ``package.module:factory`` specs in the tests."""

from __future__ import annotations

import numpy as np

WEIGHTS = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], np.float32)  # (K=2, C=3)
BIAS = np.array([0.1, -0.2], np.float32)


def reference(batch: np.ndarray) -> np.ndarray:
    """The 1x1 convolution every adapter in the conformance suite implements."""
    return np.einsum("kc,nchw->nkhw", WEIGHTS, batch) + BIAS[None, :, None, None]


def torch_conv1x1(device: str = "cpu"):
    import torch

    conv = torch.nn.Conv2d(3, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(WEIGHTS[:, :, None, None]))
        conv.bias.copy_(torch.from_numpy(BIAS))
    return conv.to(device)


def numpy_conv1x1():
    return reference


def numpy_two_class():
    """1 channel -> 2 classes: (x / 255 - 0.5, 0.5 - x / 255), pointwise."""

    def model(batch):
        z = batch / 255.0 - 0.5
        return np.concatenate([z, -z], axis=1)

    return model
