"""A small 2-D U-Net and the weights shipped with chunkseg.

The architecture follows Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for
Biomedical Image Segmentation", MICCAI 2015 (arXiv:1505.04597): a contracting path of
double 3x3 convolutions and 2x2 max-pooling, an expanding path of 2x2 transposed convolutions
whose output is concatenated with the encoder feature map of the same level (skip connection),
and a final 1x1 convolution to per-class logits. Two changes make it convenient for tiled
inference: the convolutions are zero-padded (``padding=1``), so the output has the same spatial
size as the input, and each convolution is followed by batch normalisation (used with its running
statistics in eval mode, so a pixel's output never depends on which other tiles are in a batch).

The shipped weights (:data:`WEIGHTS_PATH`, loaded by :func:`pretrained`) were trained on the
ISBI 2012 EM segmentation challenge data (Cardona et al. 2010) with :mod:`chunkseg.training.train`; see
``chunkseg/data/MODEL_CARD.md``. The model does not normalise its input: callers apply
``(x * ISBI_SCALE - ISBI_MEAN) / ISBI_STD`` to the raw uint8 intensities first.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .._check import positive_int
from ..errors import InvalidTypeError, InvalidValueError, NotFoundError

__all__ = [
    "ISBI_MEAN",
    "ISBI_SCALE",
    "ISBI_STD",
    "WEIGHTS_PATH",
    "UNet",
    "pretrained",
]

#: Multiplier mapping raw uint8 intensities to [0, 1]: ``1 / 255``.
ISBI_SCALE: float = 1.0 / 255.0

#: Mean of the scaled intensities (``x * ISBI_SCALE``) of the 20 ISBI 2012 training sections
#: (00-19) the shipped model was trained on. Measured, float64, rounded to 6 digits.
ISBI_MEAN: float = 0.486477

#: Standard deviation of the scaled intensities of the same 20 training sections.
ISBI_STD: float = 0.166526

#: Path of the shipped ``state_dict`` (float32 tensors) of ``UNet(**shipped_options())``.
WEIGHTS_PATH: Path = Path(__file__).resolve().parent.parent / "data" / "isbi2012_unet.pt"


class _DoubleConv(nn.Sequential):
    """Two (3x3 conv, padding 1, no bias) -> BatchNorm -> ReLU blocks; keeps H and W."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class _Up(nn.Module):
    """2x2 transposed conv (halves channels, doubles H and W), concat skip, double conv."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, kernel_size=2, stride=2)
        self.conv = _DoubleConv(2 * out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv(torch.cat([skip, self.up(x)], dim=1))


def _check_positive_int(name: str, value: object) -> int:
    """:func:`chunkseg._check.positive_int`, but a wrong type is an ``InvalidValueError`` too
    (a ``ValueError``, as the U-Net has always raised: ``UNet(base_channels=2.5)``)."""
    try:
        return positive_int(value, name)
    except InvalidTypeError as err:
        raise InvalidValueError(str(err)) from None


class UNet(nn.Module):
    """Small 2-D U-Net for semantic segmentation (Ronneberger et al. 2015).

    Level ``i`` (``0 <= i <= depth``) has ``base_channels * 2**i`` feature channels; the encoder
    applies a double 3x3 convolution (each conv: padding 1, BatchNorm, ReLU) and a 2x2 max-pool
    at each of the ``depth`` upper levels, the bottleneck a double convolution, and the decoder a
    2x2 transposed convolution, concatenation with the skip connection and a double convolution
    per level. A final 1x1 convolution produces ``classes`` logits per pixel. With the defaults
    the network has 482,466 parameters (1.9 MB as float32) and a receptive field of 92 x 92 px.

    Parameters
    ----------
    in_channels : int, default 1
        Number of input channels ``C_in``.
    classes : int, default 2
        Number of output channels (one logit per class). For the shipped ISBI 2012 model, class
        0 is cell interior and class 1 is membrane.
    base_channels : int, default 16
        Feature channels of the first level; doubled at every pooling.
    depth : int, default 3
        Number of 2x2 max-poolings. Input height and width must be divisible by ``2**depth``
        (8 with the default).

    Raises
    ------
    ValueError
        If any argument is not a positive int.

    Notes
    -----
    Padded convolutions make the output the same size as the input, but pixels within about
    half the receptive field (46 px with the defaults) of a tile border see zero padding instead
    of image context; overlapping tiles and blending their logits hides that.

    References
    ----------
    O. Ronneberger, P. Fischer, T. Brox. U-Net: Convolutional Networks for Biomedical Image
    Segmentation. MICCAI 2015, LNCS 9351, pp. 234-241. arXiv:1505.04597.

    Examples
    --------
    >>> import torch
    >>> net = UNet().eval()
    >>> net(torch.zeros(1, 1, 64, 64)).shape
    torch.Size([1, 2, 64, 64])
    """

    def __init__(
        self, in_channels: int = 1, classes: int = 2, base_channels: int = 16, depth: int = 3
    ) -> None:
        super().__init__()
        for name, value in [
            ("in_channels", in_channels),
            ("classes", classes),
            ("base_channels", base_channels),
            ("depth", depth),
        ]:
            _check_positive_int(name, value)
        self.in_channels = in_channels
        self.classes = classes
        self.base_channels = base_channels
        self.depth = depth
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [
                _DoubleConv(c_in, c_out)
                for c_in, c_out in zip([in_channels] + widths[:-2], widths[:-1], strict=True)
            ]
        )
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _DoubleConv(widths[-2], widths[-1])
        self.up = nn.ModuleList([_Up(widths[i + 1], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(widths[0], classes, kernel_size=1)

    @property
    def multiple(self) -> int:
        """int: The number input height and width must be divisible by, ``2**depth``."""
        return 2**self.depth

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4:
            raise InvalidValueError(f"the input must have shape (N, C_in, H, W). Got {tuple(x.shape)}.")
        if x.shape[1] != self.in_channels:
            raise InvalidValueError(
                f"the input must have in_channels={self.in_channels} channels. Got "
                f"{x.shape[1]}; convert the image or build the model for them."
            )
        h, w = x.shape[-2:]
        if h % self.multiple or w % self.multiple:
            raise InvalidValueError(
                f"the input height and width (the `tile`) must be divisible by 2**depth = "
                f"{self.multiple} (depth={self.depth}). Got H={h}, W={w}; choose a tile that is "
                f"a multiple of {self.multiple}."
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compute per-pixel class logits.

        Parameters
        ----------
        x : torch.Tensor
            float32 tensor of shape ``(N, C_in, H, W)``, already normalised (for the shipped
            model: ``(raw * ISBI_SCALE - ISBI_MEAN) / ISBI_STD``). ``H`` and ``W`` must be
            divisible by ``2**depth``.

        Returns
        -------
        torch.Tensor
            float32 logits of shape ``(N, classes, H, W)`` (unnormalised; apply softmax over
            dim 1 for probabilities).

        Raises
        ------
        ValueError
            If ``x`` is not 4-D, has the wrong number of channels, or ``H`` or ``W`` is not
            divisible by ``2**depth``.
        """
        self._check_input(x)
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for block, skip in zip(self.up, reversed(skips), strict=True):
            x = block(x, skip)
        return self.head(x)


def shipped_options() -> dict:
    """``UNet`` keyword arguments of the shipped weights (``model_options`` of the training
    record next to them, ``isbi2012_unet.json``; ``{}`` means the defaults)."""
    record = WEIGHTS_PATH.with_suffix(".json")
    if not record.is_file():
        return {}
    return dict(json.loads(record.read_text()).get("config", {}).get("model_options", {}))


def pretrained(device: str = "cpu") -> UNet:
    """Build ``UNet(**shipped_options())`` and load the shipped ISBI 2012 membrane weights.

    The model expects a single-channel input normalised by the caller as
    ``(raw_uint8 * ISBI_SCALE - ISBI_MEAN) / ISBI_STD`` (it does not normalise itself) with
    height and width divisible by ``2**depth`` (16), and returns 2 logits per pixel: class 0 = cell interior,
    class 1 = membrane. Training data, split and held-out scores: ``chunkseg/data/MODEL_CARD.md``.

    Parameters
    ----------
    device : str, default "cpu"
        Torch device to place the model on, e.g. ``"cpu"`` or ``"cuda:0"``.

    Returns
    -------
    UNet
        The model with float32 parameters, in eval mode (BatchNorm uses its running statistics).

    Raises
    ------
    FileNotFoundError
        If the weights file :data:`WEIGHTS_PATH` is missing from the installation.
    """
    if not WEIGHTS_PATH.is_file():
        raise NotFoundError(f"the shipped U-Net weights must be at {str(WEIGHTS_PATH)!r}, where none were "
                            "found; reinstall chunkseg.")
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model = UNet(**shipped_options())
    model.load_state_dict(state)
    return model.to(device).eval()
