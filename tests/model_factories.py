"""Importable model factories for ``package.module:factory`` specs in the tests."""

from __future__ import annotations

import numpy as np

WEIGHTS = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]], np.float32)  # (K=2, C=3)
BIAS = np.array([0.1, -0.2], np.float32)


def reference(batch: np.ndarray) -> np.ndarray:
    """The 1x1 convolution every adapter in the conformance suite implements."""
    return np.einsum("kc,nchw->nkhw", WEIGHTS, batch) + BIAS[None, :, None, None]


def torch_conv1x1(device: str = "cpu", crop: int = 0):
    """:func:`reference` as a torch 1x1 ``Conv2d``; ``crop`` > 0 crops that many pixels off
    each side of its output (a model returning the wrong shape)."""
    import torch

    conv = torch.nn.Conv2d(3, 2, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(WEIGHTS[:, :, None, None]))
        conv.bias.copy_(torch.from_numpy(BIAS))
    if crop:
        return torch.nn.Sequential(conv, torch.nn.ZeroPad2d(-crop)).to(device)
    return conv.to(device)


def numpy_conv1x1():
    return reference


def numpy_two_class():
    """1 channel -> 2 classes: (x / 255 - 0.5, 0.5 - x / 255), pointwise."""

    def model(batch):
        z = batch / 255.0 - 0.5
        return np.concatenate([z, -z], axis=1)

    return model


CONV3X3 = np.array(
    [[[0.05, -0.10, 0.20], [0.30, 1.00, -0.40], [0.15, -0.25, 0.10]],
     [[-0.20, 0.10, 0.05], [0.00, -1.00, 0.35], [0.25, 0.10, -0.30]]],
    np.float32,
)  # (K=2, 3, 3), one input channel
CONV3X3_BIAS = np.array([0.05, -0.05], np.float32)
LOAD_LOG_ENV = "CHUNKSEG_TEST_LOAD_LOG"
"""Environment variable naming the file :func:`logged_conv3x3` appends its loads to."""


def _conv3x3(batch):
    """1 channel -> 2 classes: a zero-padded 3x3 convolution of ``x / 255``, elementwise
    (no reductions whose order could depend on the batch size or the number of threads)."""
    x = np.pad(batch[:, 0] / np.float32(255), ((0, 0), (1, 1), (1, 1)))
    h, w = batch.shape[2:]
    out = np.empty((batch.shape[0], 2, h, w), np.float32)
    for k in range(2):
        acc = np.full((batch.shape[0], h, w), CONV3X3_BIAS[k], np.float32)
        for dy in range(3):
            for dx in range(3):
                acc += CONV3X3[k, dy, dx] * x[:, dy : dy + h, dx : dx + w]
        out[:, k] = acc
    return out


def numpy_conv3x3():
    """A non-pointwise model: a 3x3 convolution, 1 channel -> 2 classes."""
    return _conv3x3


def logged_conv3x3():
    """:func:`numpy_conv3x3`, appending this process's pid to the file named by the
    ``CHUNKSEG_TEST_LOAD_LOG`` environment variable each time it is built (when it is set)."""
    import os

    path = os.environ.get(LOAD_LOG_ENV)
    if path:
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
    return _conv3x3


def slow_conv3x3():
    """:func:`numpy_conv3x3`, 0.2 s per batch (so that a run can be interrupted part-way)."""
    import time

    def model(batch):
        time.sleep(0.2)
        return _conv3x3(batch)

    return model



FAIL_ON_ENV = "CHUNKSEG_TEST_FAIL_ON"
"""Environment variable: a pixel value (say ``255``) makes :func:`late_nan_conv3x3` and
:func:`late_raising_conv3x3` fail on every batch holding a pixel of that value; unset or
empty, they never fail (so the same model spec, hence the same fingerprint, resumes the run)."""


def _fails_on(kind: str):
    import os

    def model(batch):
        value = os.environ.get(FAIL_ON_ENV)
        if value and (batch == float(value)).any():
            if kind == "raise":
                raise RuntimeError(f"model failed on a late tile (a pixel of value {value})")
            return np.full((batch.shape[0], 2) + batch.shape[2:], np.nan, np.float32)
        return _conv3x3(batch)

    return model


def late_nan_conv3x3():
    """:func:`numpy_conv3x3`, returning NaN for batches holding the pixel value named by
    ``CHUNKSEG_TEST_FAIL_ON`` (when it is set)."""
    return _fails_on("nan")


def late_raising_conv3x3():
    """:func:`numpy_conv3x3`, raising RuntimeError for batches holding the pixel value named by
    ``CHUNKSEG_TEST_FAIL_ON`` (when it is set)."""
    return _fails_on("raise")


def threshold_instances(level: float = 128.0):
    """A per-tile instance model: connected components of ``pixel < level`` in each tile,
    ``(N, T_y, T_x)`` int32 (for :func:`chunkseg.predict_instances`)."""
    from scipy import ndimage

    def model(batch):
        out = np.zeros((batch.shape[0],) + batch.shape[2:], np.int32)
        for i, tile in enumerate(batch[:, 0]):
            out[i] = ndimage.label(tile < level)[0]
        return out

    return model


def keras_conv1x1(data_format: str = "channels_last", crop: int = 0):
    """:func:`reference` as a Keras 3 model (a 1x1 ``Conv2D``); import keras with the torch
    backend first (``KERAS_BACKEND=torch``). ``crop`` > 0 crops that many pixels off each side
    of its output (a model returning the wrong shape)."""
    import keras

    shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)
    inputs = keras.Input(shape)
    conv = keras.layers.Conv2D(2, 1, data_format=data_format)
    outputs = conv(inputs)
    if crop:
        outputs = keras.layers.Cropping2D(crop, data_format=data_format)(outputs)
    model = keras.Model(inputs, outputs, name="conv1x1")
    conv.set_weights([WEIGHTS.T[None, None], BIAS])  # kernel (1, 1, C_in, K)
    return model


def keras_unet(channels: int = 3, classes: int = 2, filters: int = 4, seed: int = 0):
    """A small random 2-level Keras U-Net (channels-last, ``same`` padding), fixed seed: two 3x3
    convolutions, 2x2 max-pooling, two 3x3 convolutions, nearest 2x upsampling, skip
    concatenation, two 3x3 convolutions and a 1x1 head. Its output at a pixel depends on the
    input within 9 pixels of it (``tests/test_keras.py`` measures it) and on the pooling grid,
    so it commutes with shifts by even offsets only."""
    import keras

    keras.utils.set_random_seed(seed)
    layers = keras.layers

    def block(x, f):
        for _ in range(2):
            x = layers.Conv2D(f, 3, padding="same", activation="relu",
                              bias_initializer=keras.initializers.RandomNormal(stddev=0.1))(x)
        return x

    inputs = keras.Input((None, None, channels))
    e1 = block(inputs, filters)
    e2 = block(layers.MaxPooling2D(2)(e1), 2 * filters)
    up = layers.UpSampling2D(2)(e2)
    d1 = block(layers.Concatenate()([up, e1]), filters)
    return keras.Model(inputs, layers.Conv2D(classes, 1)(d1), name="unet2")


def huge_logits(scale: float = 1e6):
    """1 channel -> 2 classes: ``(+scale, -scale)`` where ``x >= 128``, ``(-scale, +scale)``
    elsewhere; beyond the float16 range for the default ``scale``."""

    def model(batch):
        z = np.where(batch >= 128, np.float32(scale), np.float32(-scale))
        return np.concatenate([z, -z], axis=1).astype(np.float32)

    return model


def torch_huge_logits(device: str = "cpu", scale: float = 1e6):
    """:func:`huge_logits` as a torch module (for the torch kernel)."""
    import torch

    class Huge(torch.nn.Module):
        def forward(self, x):
            z = torch.where(x >= 128, torch.tensor(scale), torch.tensor(-scale))
            return torch.cat([z, -z], dim=1)

    return Huge().to(device)


def torch_late_raising(device: str = "cpu"):
    """A torch module: :func:`late_raising_conv3x3`'s failure (RuntimeError on batches holding
    the pixel value named by ``CHUNKSEG_TEST_FAIL_ON``), else a 1x1 two-class map."""
    import os

    import torch

    class Late(torch.nn.Module):
        def forward(self, x):
            value = os.environ.get(FAIL_ON_ENV)
            if value and bool((x == float(value)).any()):
                raise RuntimeError(f"model failed on a late tile (a pixel of value {value})")
            z = x / 255.0 - 0.5
            return torch.cat([z, -z], dim=1)

    return Late().to(device)


def numpy_two_class_steep():
    """1 channel -> 2 classes: 12 * (x / 255 - 0.5) and its negative, pointwise: class 0's
    probability runs from 0.0025 (x = 0) to 0.9975 (x = 255), for the watershed's seeds."""

    def model(batch):
        z = np.float32(12.0) * (batch / np.float32(255.0) - np.float32(0.5))
        return np.concatenate([z, -z], axis=1).astype(np.float32)

    return model
