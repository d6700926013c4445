"""Exported models keep their class names: ``export_model`` writes them into model.ts and
model.onnx, and a run of the file names its classes by them."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import chunkseg  # noqa: E402
from chunkseg.cli import main  # noqa: E402
from chunkseg.errors import InvalidValueError  # noqa: E402
from chunkseg.models.adapters import MODEL_METADATA  # noqa: E402
from chunkseg.models.architectures import build_model  # noqa: E402
from chunkseg.training.train import export_model  # noqa: E402

NAMES = ("background", "blob")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    net = build_model("unet", in_channels=1, classes=2, base_channels=4, depth=2).eval()
    norm = chunkseg.Normalization(scale=1 / 255, mean=(0.5,), std=(0.25,))
    named, plain = tmp_path_factory.mktemp("named"), tmp_path_factory.mktemp("plain")
    export_model(net, norm, named, in_channels=1, tile=32, class_names=NAMES)
    export_model(net, norm, plain, in_channels=1, tile=32)
    return net, norm, named, plain


@pytest.mark.parametrize("name", ["model.ts", "model.onnx"])
def test_round_trip_of_the_class_names(exported, name, tmp_path, capsys):
    net, norm, named, plain = exported
    image = np.random.default_rng(1).integers(0, 256, (40, 48), np.uint8)
    ds = chunkseg.predict(image, str(named / name), tile=32, overlap=8, outputs="probabilities")
    assert tuple(ds["class"].values) == NAMES
    # the same network: the in-memory model with the normalisation given gives the same values
    ref = chunkseg.predict(image, net, tile=32, overlap=8, normalization=norm,
                           outputs="probabilities")
    np.testing.assert_allclose(ds.probabilities.values, ref.probabilities.values, atol=1e-5)
    # without class names the file states none: the run's default 0, 1
    bare = chunkseg.predict(image, str(plain / name), tile=32, overlap=8, outputs="labels")
    assert tuple(str(c) for c in bare["class"].values) == ("0", "1")
    # the command writes them into its output, and a given --classes still wins
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "img.png")
    for extra, want in (([], list(NAMES)), (["--classes", "a,b"], ["a", "b"])):
        out = tmp_path / f"out{len(extra)}.zarr"
        assert main(["predict", str(tmp_path / "img.png"), str(out), "--model",
                                  str(named / name), "--tile", "32", "--overlap", "8",
                                  "--no-progress", *extra]) == 0
        assert [str(c) for c in chunkseg.open_output(out)["class"].values] == want


def test_bad_metadata_is_refused(tmp_path):
    net = build_model("unet", in_channels=1, classes=2, base_channels=4, depth=2).eval()
    traced = torch.jit.trace(net, torch.zeros(1, 1, 32, 32))
    path = tmp_path / "bad.ts"
    torch.jit.save(traced, str(path), _extra_files={MODEL_METADATA: json.dumps({"class_names": 3})})
    with pytest.raises(InvalidValueError, match="class_names"):
        chunkseg.predict(np.zeros((32, 32), np.uint8), str(path), tile=32, overlap=8)
