"""PatchDataset: training patches cut lazily from big (image, labels) pairs."""

from __future__ import annotations

import pickle
import threading

import dask.array as da
import numpy as np
import pytest
import zarr
from PIL import Image
from scipy import ndimage

torch = pytest.importorskip("torch")  # the fast tier runs without torch (.ci/run, lowest pins)

from chunkseg import Normalization  # noqa: E402
from chunkseg.training.patches import PatchDataset, augmentation, grid_starts  # noqa: E402

RNG = np.random.default_rng(10)


def _pair(h, w, c=1, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, c), dtype=np.uint8)
    labels = rng.integers(0, classes, (h, w), dtype=np.uint8)
    return image, labels


def _n(length, tile, stride):
    return (length - tile) // stride + 1 + ((length - tile) % stride != 0)


def _check_against_slicing(ds, sources):
    """Every patch equals numpy slicing of its source at its origin."""
    ty, tx = ds.tile
    for i, (p, y0, x0) in enumerate(ds.origins):
        image, labels = sources[p]
        img, lab = ds[i]
        assert img.dtype == torch.float32 and lab.dtype == torch.int64
        want = image[y0:y0 + ty, x0:x0 + tx]
        want = want[..., None] if want.ndim == 2 else want
        np.testing.assert_array_equal(img.numpy(), want.transpose(2, 0, 1).astype(np.float32))
        np.testing.assert_array_equal(lab.numpy(), labels[y0:y0 + ty, x0:x0 + tx])


# ------------------------------------------------------------------------------ grid


@pytest.mark.parametrize("length,tile,stride", [(10, 4, 4), (12, 4, 4), (11, 4, 2), (7, 7, 3),
                                                (100, 32, 24), (33, 8, 9)])
def test_grid_starts_formula_and_coverage(length, tile, stride):
    starts = grid_starts(length, tile, stride)
    assert len(starts) == _n(length, tile, stride)
    assert starts[0] == 0 and starts[-1] + tile == length and np.all(np.diff(starts) > 0)
    if stride <= tile:
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s:s + tile] = True
        assert covered.all()


@pytest.mark.parametrize("stride", [None, 16, (12, 20)])
def test_grid_matches_slicing_several_images(stride):
    sources = [_pair(70, 90, c=2, seed=1), _pair(48, 48, c=2, seed=2), _pair(33, 101, c=2, seed=3)]
    ds = PatchDataset(sources, tile=(24, 32), stride=stride)
    sy, sx = (24, 32) if stride is None else ((stride, stride) if isinstance(stride, int) else stride)
    assert len(ds) == sum(_n(h, 24, sy) * _n(w, 32, sx) for (h, w, _), _ in
                          [(im.shape, lab) for im, lab in sources])
    _check_against_slicing(ds, sources)
    for p, (image, _) in enumerate(sources):  # every pixel is in some patch
        covered = np.zeros(image.shape[:2], bool)
        for _, y0, x0 in ds.origins[ds.origins[:, 0] == p]:
            covered[y0:y0 + 24, x0:x0 + 32] = True
        assert covered.all()


def test_grid_zarr_png_and_dask_inputs(tmp_path):
    img0, lab0 = _pair(80, 72, c=3, seed=4)
    zimg = zarr.create_array(tmp_path / "img.zarr", shape=img0.shape, chunks=(32, 32, 3),
                             dtype="uint8")
    zimg[:] = img0
    zlab = zarr.create_array(tmp_path / "lab.zarr", shape=lab0.shape, chunks=(32, 32), dtype="uint8")
    zlab[:] = lab0
    img1, lab1 = _pair(50, 61, c=3, seed=5)
    Image.fromarray(img1).save(tmp_path / "img.png")
    Image.fromarray(lab1).save(tmp_path / "lab.png")
    img2, lab2 = _pair(40, 40, c=3, seed=6)
    pairs = [(str(tmp_path / "img.zarr"), str(tmp_path / "lab.zarr")),
             (tmp_path / "img.png", str(tmp_path / "lab.png")),
             (da.from_array(img2, chunks=16), da.from_array(lab2, chunks=16))]
    ds = PatchDataset(pairs, tile=20, stride=15)
    assert ds._open_pair(0).image.encoding.get("chunkseg_reader") is not None  # fast path
    _check_against_slicing(ds, [(img0, lab0), (img1, lab1), (img2, lab2)])


def test_single_pair_forms_and_labels_with_channel_axis():
    image, labels = _pair(40, 40)
    a = PatchDataset((image, labels), tile=16)
    b = PatchDataset([(image, labels[..., None])], tile=16)
    assert len(a) == len(b) == 9
    np.testing.assert_array_equal(a[4][1].numpy(), b[4][1].numpy())


def test_bad_input_errors():
    image, labels = _pair(40, 50)
    with pytest.raises(ValueError, match=r"`pairs\[1\]` labels must have the image's y/x shape"):
        PatchDataset([(image, labels), (image, labels[:, :49])], tile=16)
    with pytest.raises(ValueError, match=r"`pairs\[0\]` labels must be 2-D"):
        PatchDataset((image, np.zeros((40, 50, 2), np.uint8)), tile=16)
    with pytest.raises(ValueError, match=r"`tile` must fit inside every image.*pairs\[1\]"):
        PatchDataset([(image, labels), (image[:20], labels[:20])], tile=32)
    with pytest.raises(TypeError, match="integer or boolean dtype"):
        PatchDataset((image, labels.astype(np.float32)), tile=16)
    with pytest.raises(ValueError, match="channels"):
        PatchDataset([(image, labels), (np.zeros((40, 50, 3), np.uint8), labels)], tile=16)
    with pytest.raises(ValueError, match="`samples` must be None"):
        PatchDataset((image, labels), tile=16, samples=10)
    with pytest.raises(ValueError, match="`samples` must be a positive int"):
        PatchDataset((image, labels), tile=16, sampling="random")
    with pytest.raises(ValueError, match="`sampling` must be one of"):
        PatchDataset((image, labels), tile=16, sampling="uniform")
    with pytest.raises(TypeError, match="`tile`"):
        PatchDataset((image, labels), tile=16.0)
    with pytest.raises(ValueError, match="one mask"):
        PatchDataset([(image, labels), (image, labels)], tile=16, mask=np.ones((40, 50)))
    with pytest.raises(ValueError, match="`mask` of pair 0 must be at most"):
        PatchDataset((image, labels), tile=16, mask=np.ones((41, 50)))
    with pytest.raises(ValueError, match=r"class indices in \[0, 2\)"):
        PatchDataset((image, labels), tile=16, classes=2)[0]
    with pytest.raises(IndexError):
        PatchDataset((image, labels), tile=16)[12]


# ------------------------------------------------------------------------------ random / balanced


def test_random_reproducible_per_seed_and_epoch():
    sources = [_pair(60, 80, seed=7), _pair(100, 40, seed=8)]
    ds = PatchDataset(sources, tile=16, sampling="random", samples=50, seed=3)
    first = ds.origins
    assert first.shape == (50, 3) and len(ds) == 50
    assert set(first[:, 0]) == {0, 1}
    for p, y0, x0 in first:
        h, w = sources[p][0].shape[:2]
        assert 0 <= y0 <= h - 16 and 0 <= x0 <= w - 16
    _check_against_slicing(ds, sources)
    again = PatchDataset(sources, tile=16, sampling="random", samples=50, seed=3)
    np.testing.assert_array_equal(again.origins, first)
    ds.set_epoch(1)
    assert not np.array_equal(ds.origins, first)
    ds.set_epoch(0)
    np.testing.assert_array_equal(ds.origins, first)
    other = PatchDataset(sources, tile=16, sampling="random", samples=50, seed=4)
    assert not np.array_equal(other.origins, first)
    # per-index draws: reading patch 7 alone gives the origin `origins` reports
    fresh = PatchDataset(sources, tile=16, sampling="random", samples=50, seed=3)
    p, y0, x0 = first[7]
    np.testing.assert_array_equal(fresh[7][1].numpy(), sources[p][1][y0:y0 + 16, x0:x0 + 16])


def _rare_class_labels():
    """400 x 400, class 0 background, class 1 ~20 %, class 2 ~5 %, classes 1 and 2 kept >= 16 px
    from the border (so a patch centred on them is never shifted)."""
    labels = np.zeros((400, 400), np.uint8)
    labels[16:-16, 16:200] = 1
    labels[40:130, 220:230] = 1
    rng = np.random.default_rng(11)
    for cy, cx in rng.integers(40, 360, (40, 2)):
        labels[cy - 8:cy + 8, cx - 8:cx + 8][labels[cy - 8:cy + 8, cx - 8:cx + 8] == 0] = 2
    return labels


def test_balanced_gives_equal_centre_class_frequencies():
    labels = _rare_class_labels()
    freq = np.bincount(labels.ravel(), minlength=3) / labels.size
    assert 0.03 < freq[2] < 0.07 and freq[0] > 0.5, freq  # one class is about 5 %
    image = (labels * 100 + 20).astype(np.uint8)
    pairs = (da.from_array(image, chunks=64), da.from_array(labels, chunks=64))
    ds = PatchDataset(pairs, tile=16, sampling="balanced", samples=2000, seed=1)
    np.testing.assert_array_equal(ds.class_counts, np.bincount(labels.ravel()))
    origins = ds.origins
    centre = labels[origins[:, 1] + 8, origins[:, 2] + 8]
    got = np.bincount(centre, minlength=3) / len(centre)
    # binomial sd at n = 2000, p = 1/3: 0.0105; +-0.05 is about 4.7 sd
    np.testing.assert_allclose(got, 1 / 3, atol=0.05)
    for i in (0, 1, 2):  # __getitem__ reads the patch at that origin
        assert ds[i][1][8, 8].item() == centre[i]
    # a uniform random sampler sees the rare class ~5 % of the time: balancing did something
    uniform = PatchDataset(pairs, tile=16, sampling="random", samples=2000, seed=1).origins
    assert np.mean(labels[uniform[:, 1] + 8, uniform[:, 2] + 8] == 2) < 0.1
    # reproducible, and new draws per epoch
    again = PatchDataset(pairs, tile=16, sampling="balanced", samples=2000, seed=1)
    np.testing.assert_array_equal(again.origins[:100], origins[:100])
    ds.set_epoch(1)
    assert not np.array_equal(ds.origins[:100], origins[:100])


def test_balanced_over_several_pairs_draws_from_each():
    a = np.zeros((64, 64), np.uint8)
    a[20:40, 20:40] = 1
    b = np.zeros((48, 80), np.uint8)
    b[10:30, 30:60] = 2
    ds = PatchDataset([(a, a), (b, b)], tile=16, sampling="balanced", samples=300, seed=0)
    o = ds.origins
    centre = np.array([(a, b)[p][y + 8, x + 8] for p, y, x in o])
    assert set(centre[o[:, 0] == 0]) == {0, 1} and set(centre[o[:, 0] == 1]) == {0, 2}
    assert np.all(np.abs(np.bincount(centre, minlength=3) - 100) < 30)  # 300 draws, 1/3 each
    # class 0 is drawn over both pairs in proportion to its pixels (3696 and 3240)
    share = np.mean(o[centre == 0, 0] == 0)
    assert abs(share - 3696 / (3696 + 3240)) < 0.17


# ------------------------------------------------------------------------------ mask, labels


def _fraction(mask, shape, y0, x0, t):
    h, w = shape
    my, mx = mask.shape
    r0, r1 = (y0 * my) // h, -((-(y0 + t) * my) // h)
    c0, c1 = (x0 * mx) // w, -((-(x0 + t) * mx) // w)
    return (mask[r0:r1, c0:c1] > 0).mean()


@pytest.mark.parametrize("mask_shape", [(90, 70), (9, 7), (30, 35)])
def test_grid_mask_filtering_matches_brute_force(mask_shape):
    image, labels = _pair(90, 70)
    mask = RNG.random(mask_shape) > 0.4
    ds = PatchDataset((image, labels), tile=20, stride=10, mask=da.from_array(mask, chunks=8),
                      min_foreground=0.6)
    full = PatchDataset((image, labels), tile=20, stride=10)
    want = [(p, y, x) for p, y, x in full.origins if _fraction(mask, (90, 70), y, x, 20) >= 0.6]
    assert 0 < len(want) < len(full)
    np.testing.assert_array_equal(ds.origins, np.array(want))
    _check_against_slicing(ds, [(image, labels)])


def test_random_with_mask_redraws_and_fails_clearly():
    image, labels = _pair(80, 80)
    mask = np.zeros((80, 80), np.uint8)
    mask[:, :30] = 1
    ds = PatchDataset((image, labels), tile=16, sampling="random", samples=100, mask=mask,
                      min_foreground=0.5)
    fractions = [_fraction(mask, (80, 80), y, x, 16) for _, y, x in ds.origins]
    assert min(fractions) >= 0.5
    balanced = PatchDataset((image, labels), tile=16, sampling="balanced", samples=50, mask=mask,
                            min_foreground=0.5)
    assert min(_fraction(mask, (80, 80), y, x, 16) for _, y, x in balanced.origins) >= 0.5
    empty = PatchDataset((image, labels), tile=16, sampling="random", samples=5,
                         mask=np.zeros((80, 80)), max_attempts=20)
    with pytest.raises(ValueError, match="`min_foreground` must be reachable"):
        empty[0]
    with pytest.raises(ValueError, match="`mask` must leave at least one grid patch"):
        PatchDataset((image, labels), tile=16, mask=np.zeros((80, 80)))


def test_label_map_and_ignore_index():
    stored = np.full((32, 32), 255, np.uint8)
    stored[:, 10:12] = 0
    stored[5:8, 20:30] = 128  # not in the map: ignored
    image = np.zeros((32, 32), np.uint8)
    ds = PatchDataset((image, stored), tile=32, label_map={255: 0, 0: 1}, ignore_index=-1)
    lab = ds[0][1].numpy()
    want = np.where(stored == 255, 0, np.where(stored == 0, 1, -1))
    np.testing.assert_array_equal(lab, want)
    assert ds.num_classes == 2
    # without a map, stored ignore values stay; others are class indices
    raw = np.where(stored == 128, 7, stored == 0).astype(np.int16)
    lab = PatchDataset((image, raw), tile=32, ignore_index=7, classes=2)[0][1].numpy()
    np.testing.assert_array_equal(lab, np.where(stored == 128, 7, stored == 0))
    with pytest.raises(ValueError, match="`label_map` values must be class indices"):
        PatchDataset((image, stored), tile=32, label_map={255: 0, 0: -100})


def test_normalization_is_the_inference_formula():
    image, labels = _pair(48, 48, c=3)
    norm = Normalization(scale=1 / 255, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    ds = PatchDataset((image, labels), tile=24, normalization=norm)
    batch = image[24:48, 0:24].transpose(2, 0, 1)[None].astype(np.float32)
    np.testing.assert_array_equal(ds[2][0].numpy(), norm(batch)[0])
    with pytest.raises(ValueError, match="channels"):
        PatchDataset((image, labels), tile=24, normalization=Normalization(mean=(0.1, 0.2)))


# ------------------------------------------------------------------------------ augmentation


def _painted(h=96, w=96, seed=12):
    """Blocky labels 0..2 and an image painting them as intensities 20, 120, 220."""
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 3, (h // 8, w // 8)), np.ones((8, 8), np.int64)).astype(np.uint8)
    labels[:5, :] = 0  # asymmetric, so that every D4 element changes the patch
    labels[:, -3:] = 2
    return (labels * 100 + 20).astype(np.uint8), labels


def _threshold(img):
    return np.digitize(img, [70, 170])


def test_d4_keeps_image_and_mask_aligned_exactly():
    image, labels = _painted()
    ds = PatchDataset((image, labels), tile=48, transform=augmentation("flips"))
    plain = PatchDataset((image, labels), tile=48)
    changed = 0
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            img, lab = ds[i]
            np.testing.assert_array_equal(_threshold(img.numpy()[0]), lab.numpy())
            changed += not np.array_equal(lab.numpy(), plain[i][1].numpy())
    assert changed >= 8  # 16 patches, 7/8 of D4 elements change a patch


def test_elastic_keeps_alignment_nearly_everywhere():
    image, labels = _painted(128, 128)
    ds = PatchDataset((image, labels), tile=64, stride=32,
                      transform=augmentation("em", elastic_p=1.0, jitter_p=1.0))
    plain = PatchDataset((image, labels), tile=64, stride=32)
    mismatch, off_edge, moved = [], [], 0
    for i in range(len(ds)):
        img, lab = ds[i]
        img, lab = img.numpy()[0], lab.numpy()
        assert set(np.unique(lab)) <= {0, 1, 2}  # nearest: no blended labels
        bad = _threshold(img) != lab
        edge = ndimage.maximum_filter(lab, 3) != ndimage.minimum_filter(lab, 3)
        mismatch.append(bad.mean())
        off_edge.append((bad & ~edge).mean())
        moved += np.mean(lab != plain[i][1].numpy()) > 0.05
    # The image is interpolated linearly, the mask by nearest neighbour: they differ where the
    # sampling point falls between pixels of two classes (a 0|2 blend even reads as class 1).
    # Measured: 3-5 % of the pixels of these 8 px blocks, all but <= 1 pixel per patch next to
    # a label edge (3 x 3 neighbourhood holding two classes).
    assert max(mismatch) < 0.08, mismatch
    assert max(off_edge) < 0.002, off_edge
    assert moved == len(ds)  # the deformation (and D4) did move every patch


def test_elastic_ignore_border_fills_labels_with_ignore_index():
    image, labels = _painted(64, 64)
    aug = augmentation("em", elastic_p=1.0, jitter_p=0.0, alpha=400, sigma=6, border="ignore",
                       ignore_index=-100)
    ds = PatchDataset((image, labels), tile=64, transform=aug)
    filled = 0
    for epoch in range(6):
        ds.set_epoch(epoch)
        img, lab = ds[0]
        img, lab = img.numpy()[0], lab.numpy()
        ignored = lab == -100
        filled += ignored.sum()
        assert set(np.unique(lab)) <= {-100, 0, 1, 2}
        assert np.mean(img[ignored] < 70) > 0.9  # the image is filled with 0 there
        # strong deformation stretches a source edge over ~2 output pixels: a 5 x 5 edge zone
        edge = ndimage.maximum_filter(lab, 5) != ndimage.minimum_filter(lab, 5)
        bad = (_threshold(img) != lab) & ~ignored
        assert bad.mean() < 0.08 and (bad & ~edge).mean() < 0.002
    assert filled > 0


def test_augmentation_is_reproducible_and_per_epoch():
    image, labels = _painted()
    aug = augmentation("em", elastic_p=1.0)
    a = PatchDataset((image, labels), tile=48, transform=aug)
    b = PatchDataset((image, labels), tile=48, transform=augmentation("em", elastic_p=1.0))
    np.testing.assert_array_equal(a[1][0].numpy(), b[1][0].numpy())
    first = a[1][0].numpy()
    a.set_epoch(1)
    assert not np.array_equal(a[1][0].numpy(), first)


def test_uint16_and_rgb_transforms_keep_stored_units():
    image = RNG.integers(0, 60000, (32, 32, 1), dtype=np.uint16)
    labels = np.zeros((32, 32), np.uint8)
    ds = PatchDataset((image, labels), tile=32, transform=augmentation("flips"))
    got = ds[0][0].numpy()[0]
    d4 = [np.rot90(image[..., 0], k) for k in range(4)]
    d4 += [np.fliplr(x) for x in d4]
    assert any(np.allclose(got, x, rtol=0, atol=0.01) for x in d4)  # float32 round trip
    rgb = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    img, lab = PatchDataset((rgb, labels), tile=32, transform=augmentation("rgb"))[0]
    assert img.shape == (3, 32, 32) and lab.shape == (32, 32)
    assert augmentation("none")(image=rgb, mask=labels)["image"] is not None


def test_non_square_tile_with_rotations_is_refused():
    image, labels = _pair(40, 60)
    ds = PatchDataset((image, labels), tile=(16, 24), transform=augmentation("flips"))
    with pytest.raises(ValueError, match="`transform` must keep the patch shape"):
        for epoch in range(8):  # some element of D4 rotates by 90 degrees
            ds.set_epoch(epoch)
            for i in range(len(ds)):
                ds[i]


# ------------------------------------------------------------------------------ workers, reads


def test_dataloader_workers_give_the_same_batches(tmp_path):
    image, labels = _painted(96, 96)
    for name, arr, chunks in (("img.zarr", image, (32, 32)), ("lab.zarr", labels, (32, 32))):
        z = zarr.create_array(tmp_path / name, shape=arr.shape, chunks=chunks, dtype=arr.dtype)
        z[:] = arr
    ds = PatchDataset((str(tmp_path / "img.zarr"), str(tmp_path / "lab.zarr")), tile=32,
                      sampling="random", samples=12, transform=augmentation("em"), seed=5,
                      normalization=Normalization(scale=1 / 255))
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._opened == {}  # no open store travels
    np.testing.assert_array_equal(clone[3][0].numpy(), ds[3][0].numpy())
    ds.set_epoch(2)

    def batches(workers):
        loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=workers)
        return list(loader)

    serial, parallel = batches(0), batches(2)
    assert len(serial) == len(parallel) == 3
    for (a, la), (b, lb) in zip(serial, parallel):
        assert a.shape == (4, 1, 32, 32) and la.shape == (4, 32, 32)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        torch.testing.assert_close(la, lb, rtol=0, atol=0)


class ReadCountingStore(zarr.storage.WrapperStore):
    """A Zarr store that counts reads per key (the `CountingStore` of tests/reference.py
    counts writes)."""

    def __init__(self, store):
        super().__init__(store)
        self.reads: dict[str, int] = {}
        self.lock = threading.Lock()

    async def get(self, key, prototype, byte_range=None):
        with self.lock:
            self.reads[key] = self.reads.get(key, 0) + 1
        return await super().get(key, prototype, byte_range)

    def _with_store(self, store):
        return self


def test_reads_only_the_chunks_a_patch_needs(tmp_path):
    image, labels = _rare_class_labels() * 50, _rare_class_labels()
    stores = {}
    for name, arr in (("img", image), ("lab", labels)):
        zarr.create_array(tmp_path / name, shape=arr.shape, chunks=(50, 50), dtype=arr.dtype)[:] = arr
        stores[name] = ReadCountingStore(zarr.storage.LocalStore(tmp_path / name, read_only=True))
    img_arr = zarr.open_array(store=stores["img"], mode="r")
    lab_arr = zarr.open_array(store=stores["lab"], mode="r")
    ds = PatchDataset((img_arr, lab_arr), tile=40, stride=40)
    for store in stores.values():
        store.reads.clear()
    index = int(np.flatnonzero((ds.origins[:, 1] == 40) & (ds.origins[:, 2] == 80))[0])
    ds[index]  # y 40..80, x 80..120: chunks (0, 1), (0, 2), (1, 1), (1, 2) of 50 x 50
    for store in stores.values():
        chunks = {k: v for k, v in store.reads.items() if k.startswith("c/")}
        assert chunks == {"c/0/1": 1, "c/0/2": 1, "c/1/1": 1, "c/1/2": 1}, store.reads
        store.reads.clear()
    # balanced: one pass over the labels counts the classes, each chunk read once
    balanced = PatchDataset((img_arr, lab_arr), tile=40, sampling="balanced", samples=20)
    chunks = {k: v for k, v in stores["lab"].reads.items() if k.startswith("c/")}
    assert len(chunks) == 64 and set(chunks.values()) == {1}
    assert not any(k.startswith("c/") for k in stores["img"].reads)
    for store in stores.values():
        store.reads.clear()
    balanced[0]  # one cell of labels to place the patch, then the patch: a few chunks
    assert sum(v for k, v in stores["lab"].reads.items() if k.startswith("c/")) <= 8
    assert sum(v for k, v in stores["img"].reads.items() if k.startswith("c/")) <= 4
