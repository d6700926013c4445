"""chunkseg.evaluation.seams: the seam report (tiling vs the whole-image pass) and ``chunkseg seams``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import InvalidTypeError, InvalidValueError, ModelOutputError
from chunkseg.evaluation.seams import (
    DEFAULT_BINS,
    SeamReport,
    edge_distance,
    format_seam_table,
    seam_report,
)
from chunkseg.kernels.windows import WINDOWS
from chunkseg.plan import plan_tiles
from chunkseg.viz import plot_seam_report

ISBI_20 = Path(__file__).resolve().parents[2] / "data" / "isbi2012" / "train" / "image" / "20.png"
METHODS = ["naive", "crop-only", *WINDOWS]


def _image(h=70, w=90, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


def pointwise(batch):
    """1 channel -> 2 classes, per pixel (no receptive field): a 1x1 convolution."""
    z = batch / np.float32(255) - np.float32(0.5)
    return np.concatenate([1.5 * z + 0.1, -0.75 * z], axis=1)


def _box(x):
    """5x5 box filter of one (h, w) plane, zero padding outside it (a conv's padding)."""
    return uniform_filter(x.astype(np.float64), size=5, mode="constant").astype(np.float32)


def box5(batch):
    """1 channel -> 2 classes: a 5x5 box-filter convolution (receptive field radius 2)."""
    z = np.stack([_box(b[0] / 255.0) for b in batch])[:, None]
    return np.concatenate([z - 0.5, 0.5 - z + 0.01 * batch / 255.0], axis=1).astype(np.float32)


def _pixel_edge_distance(plan):
    """Distance to the nearest tile edge, brute force: |pixel centre - edge line| - 1/2."""
    out = []
    for axis in range(2):
        n = plan.image_shape[axis]
        lines = [o + e for o in plan.tile_origins()[axis] for e in (0, plan.tile[axis])]
        centres = np.arange(n) + 0.5
        out.append(np.min([np.abs(centres - e) - 0.5 for e in lines], axis=0))
    return np.minimum(out[0][:, None], out[1][None, :]).astype(np.int64)


def _binned(diff, wrong, dist, bins):
    rows = []
    edges = list(bins) + [np.inf]
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (dist >= lo) & (dist < hi)
        rows.append((int(sel.sum()), float(diff[sel].mean()) if sel.any() else None,
                     float(wrong[sel].mean()) if sel.any() else None))
    return rows


# -- geometry ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape, tile, overlap", [((70, 90), 32, 8), ((61, 50), (24, 20), (7, 5)),
                                                  ((40, 40), 64, 16), ((50, 33), 16, 0)])
def test_edge_distance_matches_brute_force(shape, tile, overlap):
    plan = plan_tiles(shape, tile, overlap)
    got = edge_distance(plan)
    assert got.shape == shape and got.dtype == np.int64
    np.testing.assert_array_equal(got, _pixel_edge_distance(plan))


def test_edge_distance_examples():
    naive = plan_tiles((10, 10), 4, 0)  # edges before pixels 0, 4, 8, 12
    np.testing.assert_array_equal(edge_distance(naive)[:, 9], [0, 1, 1, 0, 0, 1, 1, 0, 0, 1])
    grid = plan_tiles((10, 10), 6, 2)  # origins -1, 3, 7; ends 5, 9, 13: row 0 is 1 px away
    np.testing.assert_array_equal(edge_distance(grid)[5], [0] * 10)
    np.testing.assert_array_equal(edge_distance(grid)[0], [1, 1] + [0] * 8)


# -- invariants -------------------------------------------------------------------------------

@pytest.mark.parametrize("tile, overlap", [(32, 8), (24, 7)])
def test_pointwise_model_every_method_equals_reference(tile, overlap):
    report = seam_report(_image(), pointwise, tile=tile, overlap=overlap)
    assert list(report.methods) == METHODS
    for name, m in report.methods.items():
        assert m["disagreement"] == 0, name
        assert m["max_abs_logit_diff"] < 1e-5, (name, m["max_abs_logit_diff"])
        assert all(b["disagreement"] in (0, None) for b in m["bins"]), name
        assert sum(b["pixels"] for b in m["bins"]) == 70 * 90
    assert report.classes == 2 and report.image_shape == (70, 90)
    assert report.reference["multiple"] == [1, 1] and report.reference["margin"] == [tile // 2] * 2


def test_pointwise_torch_module_three_channels():
    torch = pytest.importorskip("torch")
    conv = torch.nn.Conv2d(3, 2, kernel_size=1)
    img = np.random.default_rng(1).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    report = seam_report(img, conv, tile=16, overlap=4, windows="gaussian,cosine",
                         normalization=chunkseg.Normalization(1 / 255, (0.5,), (0.25,)))
    assert list(report.methods) == ["naive", "crop-only", "gaussian", "cosine"]
    assert report.channels == 3
    for m in report.methods.values():
        assert m["disagreement"] == 0 and m["max_abs_logit_diff"] < 1e-5


def test_box_filter_errors_sit_at_tile_edges_and_blending_beats_naive():
    img = _image(96, 88, seed=3)
    report = seam_report(img, box5, tile=32, overlap=8)
    m = report.methods
    naive = [b["mean_abs_logit_diff"] for b in m["naive"]["bins"]]
    assert naive[0] > 0.01  # radius 2: wrong within 2 px of a patch edge...
    assert naive[1] == pytest.approx(0, abs=1e-6)  # ... and exact from 4 px on
    assert m["naive"]["bins"][0]["disagreement"] > m["naive"]["bins"][1]["disagreement"]
    # crop-only keeps each pixel >= overlap // 2 = 4 px from its tile's edge: exact here
    assert m["crop-only"]["max_abs_logit_diff"] < 1e-5 and m["crop-only"]["disagreement"] == 0
    for name in WINDOWS:
        assert m[name]["mean_abs_logit_diff"] < m["naive"]["mean_abs_logit_diff"], name
        assert m[name]["bins"][0]["mean_abs_logit_diff"] < naive[0], name
    assert m["gaussian"]["mean_abs_logit_diff"] < m["uniform"]["mean_abs_logit_diff"]
    assert set(report.maps) == {"naive", "gaussian"}
    assert report.maps["naive"].shape == img.shape and report.maps["naive"].dtype == np.float32


def test_binned_numbers_match_a_direct_numpy_computation():
    img = _image(45, 52, seed=4)
    tile, overlap, margin, bins = 16, 6, 8, (0, 2, 3, 6)
    report = seam_report(img, box5, tile=tile, overlap=overlap, margin=margin, bins=bins,
                         windows=())
    assert list(report.methods) == ["naive", "crop-only"]
    h, w = img.shape
    x = img / 255.0
    # reference: the box filter on the image mirrored by `margin` (numpy "reflect"), cropped
    padded = np.pad(x, margin, mode="reflect")
    zr = _box(padded)[margin:margin + h, margin:margin + w]
    ref = np.stack([zr - 0.5, 0.5 - zr + 0.01 * x])
    # naive: patches at multiples of the tile, reflect-padded after the image, cut and pasted
    n_y, n_x = -(-h // tile), -(-w // tile)
    big = np.pad(x, ((0, n_y * tile - h), (0, n_x * tile - w)), mode="reflect")
    zn = np.zeros_like(big)
    for i in range(n_y):
        for j in range(n_x):
            sl = np.s_[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile]
            zn[sl] = _box(big[sl])
    zn, xn = zn[:h, :w], big[:h, :w]
    naive = np.stack([zn - 0.5, 0.5 - zn + 0.01 * xn])
    # crop-only: tile k spans [k*S - b, k*S - b + T); pixel p from the tile whose centre is
    # nearest (computed here by comparing centres)
    plan = plan_tiles((h, w), tile, overlap)
    b, s = overlap // 2, tile - overlap
    gy, gx = plan.grid_shape
    big = np.pad(x, ((b, gy * s + overlap - b - h), (b, gx * s + overlap - b - w)), mode="reflect")
    crop = np.empty((2, h, w))
    cy = np.arange(gy) * s - b + (tile - 1) / 2
    cx = np.arange(gx) * s - b + (tile - 1) / 2
    for yy in range(h):
        ky = int(np.flatnonzero(np.abs(cy - yy) == np.abs(cy - yy).min())[-1])
        for xx in range(w):
            kx = int(np.flatnonzero(np.abs(cx - xx) == np.abs(cx - xx).min())[-1])
            t = big[ky * s:ky * s + tile, kx * s:kx * s + tile]
            zt = _box(t)[yy - (ky * s - b), xx - (kx * s - b)]
            crop[:, yy, xx] = (zt - 0.5, 0.5 - zt + 0.01 * x[yy, xx])
    ref_labels = ref.argmax(0)
    for name, logits, grid in (("naive", naive, plan_tiles((h, w), tile, 0)),
                               ("crop-only", crop, plan)):
        diff = np.abs(logits - ref).mean(0)
        wrong = logits.argmax(0) != ref_labels
        expect = _binned(diff, wrong, _pixel_edge_distance(grid), bins)
        got = report.methods[name]
        assert got["mean_abs_logit_diff"] == pytest.approx(diff.mean(), abs=1e-6)
        assert got["disagreement"] == pytest.approx(wrong.mean(), abs=1e-12)
        assert [r["range"] for r in got["bins"]] == ["0-2", "2-3", "3-6", "6+"]
        for row, (n, d, dis) in zip(got["bins"], expect):
            assert row["pixels"] == n, name
            if n == 0:
                assert row["mean_abs_logit_diff"] is None and row["disagreement"] is None
            else:
                assert row["mean_abs_logit_diff"] == pytest.approx(d, abs=1e-6), name
                assert row["disagreement"] == pytest.approx(dis, abs=1e-12), name
    assert report.methods["naive"]["bins"][0]["mean_abs_logit_diff"] > 0.01


def test_shipped_unet_on_a_crop():
    from PIL import Image

    pytest.importorskip("torch")  # the shipped U-Net; the fast tier runs without torch too
    if not ISBI_20.is_file():
        pytest.skip("ISBI 2012 section 20 not in this checkout")
    img = np.asarray(Image.open(ISBI_20))[:100, :124]  # not a multiple of 8: padded
    report = seam_report(img, "isbi2012-unet", tile=64, overlap=16, windows="gaussian")
    from chunkseg.models.unet import pretrained

    m = pretrained().multiple  # 2**depth of the shipped U-Net
    assert report.reference["multiple"] == [m, m]
    py, px = report.reference["padded_shape"]
    assert py % m == 0 and px % m == 0 and py >= 100 + 64 and px >= 124 + 64
    m = report.methods
    assert m["gaussian"]["mean_abs_logit_diff"] < m["naive"]["mean_abs_logit_diff"]
    assert m["crop-only"]["mean_abs_logit_diff"] < m["naive"]["mean_abs_logit_diff"]
    near, far = m["naive"]["bins"][0], m["naive"]["bins"][-2]
    assert near["mean_abs_logit_diff"] > far["mean_abs_logit_diff"]


# -- output -----------------------------------------------------------------------------------

def test_table_json_round_trip_and_figure(tmp_path):
    report = seam_report(_image(), box5, tile=32, overlap=8, windows=["gaussian"])
    d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert d["bins"] == list(DEFAULT_BINS) and d["bin_labels"][-1] == "32+"
    assert "maps" not in d
    table = format_seam_table(report)
    assert table == format_seam_table(d)
    assert "naive" in table and "crop-only" in table and "gaussian" in table
    assert "32+" in table and "reflect-padded by 16x16" in table
    fig = plot_seam_report(report, tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) >= 4
    assert isinstance(report, SeamReport)


def test_refuses_an_image_over_max_pixels():
    with pytest.raises(InvalidValueError, match=r"`max_pixels` = 1000 .* Got 70 x 90 = 6300"):
        seam_report(_image(), pointwise, tile=32, overlap=8, max_pixels=1000)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"bins": (1, 4)}, InvalidValueError, "`bins` must"),
    ({"bins": (0, 4, 4)}, InvalidValueError, "`bins` must"),
    ({"bins": "0,4"}, InvalidTypeError, "`bins` must"),
    ({"windows": "gaussian,hann"}, InvalidValueError, "`windows` must"),
    ({"max_pixels": 0}, InvalidValueError, "`max_pixels` must"),
    ({"margin": -1}, InvalidValueError, "`margin` must"),
    ({"multiple": 0}, InvalidValueError, "`multiple` must"),
    ({"margin": (1, 2.5)}, InvalidTypeError, "`margin` must be an int or a pair"),
    ({"max_pixels": 1.5}, InvalidTypeError, "`max_pixels` must be a positive int"),
    ({"batch_size": 0}, InvalidValueError, "`batch_size` must"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        seam_report(_image(), pointwise, tile=32, overlap=8, **kwargs)


def test_a_model_that_refuses_the_whole_image_names_the_fix():
    def picky(batch):
        if batch.shape[2] % 16:
            raise ValueError("height must be divisible by 16")
        return pointwise(batch)

    with pytest.raises(ModelOutputError, match="multiple=N"):
        seam_report(_image(70, 90), picky, tile=32, overlap=8, margin=0)
    report = seam_report(_image(70, 90), picky, tile=32, overlap=8, multiple=16, windows=())
    assert report.reference["padded_shape"][0] % 16 == 0


# -- CLI --------------------------------------------------------------------------------------

def _png(path, img):
    from PIL import Image

    Image.fromarray(img).save(path)
    return str(path)


def test_cli_writes_table_figure_and_json(tmp_path, capsys):
    src = _png(tmp_path / "in.png", _image(48, 56))
    out, js = tmp_path / "report", tmp_path / "r.json"
    args = ["seams", src, "--model", "model_factories:numpy_two_class", "--tile", "16",
            "--overlap", "4", "--windows", "gaussian,cosine", "--bins", "0,2,4",
            "--out", str(out), "--json", str(js)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "mean |logit - reference|" in printed and "cosine" in printed and "4+" in printed
    assert (out / "seam_report.png").read_bytes()[:4] == b"\x89PNG"
    d = json.loads(js.read_text())
    assert list(d["methods"]) == ["naive", "crop-only", "gaussian", "cosine"]
    assert d["tile"] == [16, 16] and d["bins"] == [0, 2, 4]
    # again: the outputs exist, refused before any work, one line, exit 2
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--overwrite" in err
    assert main(args + ["--overwrite"]) == 0


def test_cli_refuses_an_oversize_image(tmp_path, capsys):
    src = _png(tmp_path / "in.png", _image(48, 56))
    code = main(["seams", src, "--model", "model_factories:numpy_two_class", "--tile", "16",
                 "--overlap", "4", "--max-pixels", "1000", "--out", str(tmp_path / "o")])
    assert code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("chunkseg seams: error: `image` must have at most `--max-pixels`")
    assert "48 x 56 = 2688" in err and "--max-pixels" in err
    assert not (tmp_path / "o").exists()
