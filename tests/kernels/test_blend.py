"""Per-chunk numpy kernels against plain loops."""

from __future__ import annotations

import numpy as np
import pytest
from reference import conv_model

from chunkseg.errors import ModelOutputError
from chunkseg.kernels import blend

RNG = np.random.default_rng(7)


def test_tile_starts():
    np.testing.assert_array_equal(blend.tile_starts(3 * 48 + 16, 64, 16), [0, 48, 96])
    with pytest.raises(ValueError, match="stride"):
        blend.tile_starts(100, 64, 16)


@pytest.mark.parametrize("batch_size", [1, 3, 100])
def test_accumulate_block_equals_loop(batch_size):
    tile, overlap = (24, 20), (8, 4)
    block = RNG.random((2, 2 * 16 + 8, 3 * 16 + 4)).astype(np.float32)
    model = conv_model(RNG.normal(size=(3, 2, 3, 3)))
    window = RNG.random(tile).astype(np.float32) + 0.5
    acc = blend.accumulate_block(block, model, window, overlap, batch_size=batch_size)
    expected = np.zeros((4,) + block.shape[1:])
    for y in range(0, 2 * 16, 16):
        for x in range(0, 3 * 16, 16):
            out = model(block[None, :, y : y + 24, x : x + 20])[0]
            expected[:3, y : y + 24, x : x + 20] += out * window
            expected[3, y : y + 24, x : x + 20] += window
    assert acc.dtype == np.float32 and acc.shape == expected.shape
    np.testing.assert_allclose(acc, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_run_tiles_equals_loop(batch_size):
    image = RNG.integers(0, 256, (2, 50, 61), dtype=np.uint8)
    model = conv_model(RNG.normal(size=(3, 2, 3, 3)))
    origins = [(y, x) for y in (0, 13, 26) for x in (0, 20, 37)]
    calls = []

    def counted(batch):
        calls.append(len(batch))
        return model(batch)

    got = list(blend.run_tiles(counted, lambda y, x: image[:, y:y + 24, x:x + 24], origins,
                               batch_size))
    assert [o for part, _ in got for o in part] == origins
    assert calls == [len(p) for p, _ in got] and max(calls) <= batch_size
    logits = np.concatenate([z for _, z in got])
    assert logits.dtype == np.float32
    for (y, x), z in zip(origins, logits):  # the plain loop: one tile at a time
        tile = image[None, :, y:y + 24, x:x + 24].astype(np.float32)
        np.testing.assert_array_equal(z, model(tile)[0].astype(np.float32))
    assert list(blend.run_tiles(model, None, [], batch_size)) == []


def test_run_tiles_checks_every_batch_against_the_first():
    tiles = np.zeros((4, 1, 8, 8), np.float32)
    outputs = iter([np.zeros((2, 2, 8, 8)), np.zeros((2, 3, 8, 8))])
    runs = blend.run_tiles(lambda b: next(outputs), lambda y, x: tiles[y],
                           [(i, 0) for i in range(4)], 2)
    next(runs)
    with pytest.raises(ModelOutputError, match="3 classes, but 2"):
        next(runs)
    with pytest.raises(ModelOutputError, match="shape"):
        next(blend.run_tiles(lambda b: b[:, :, :4], lambda y, x: tiles[y], [(0, 0)], 1))


def test_accumulate_block_casts_uint8():
    block = (RNG.random((1, 56, 56)) * 255).astype(np.uint8)
    acc = blend.accumulate_block(block, lambda b: b * 1.0, np.ones((32, 32), np.float32), (8, 8))
    np.testing.assert_allclose(acc[0] / acc[1], block[0].astype(np.float32))


def test_fold_and_normalize():
    a = RNG.random((3, 4, 5)).astype(np.float32)
    out = blend.fold_pieces((3, 6, 6), [((slice(0, 4), slice(0, 5)), a),
                                         ((slice(2, 6), slice(1, 6)), a)])
    expected = np.zeros((3, 6, 6), np.float32)
    expected[:, :4, :5] += a
    expected[:, 2:, 1:] += a
    np.testing.assert_array_equal(out, expected)
    acc = np.stack([np.full((2, 2), 6.0), np.full((2, 2), 3.0), np.full((2, 2), 2.0)])
    np.testing.assert_array_equal(blend.normalize_accumulator(acc), [[[3, 3], [3, 3]],
                                                                     [[1.5, 1.5], [1.5, 1.5]]])


def test_probabilities_and_labels():
    logits = RNG.normal(size=(4, 5, 6)).astype(np.float32) * 30
    p = blend.probabilities_from_logits(logits)
    e = np.exp(logits.astype(np.float64) - logits.max(0))
    np.testing.assert_allclose(p, e / e.sum(0), rtol=1e-5, atol=1e-12)
    np.testing.assert_array_equal(blend.labels_from_logits(logits), logits.argmax(0))
    assert blend.labels_dtype(2) == np.uint8 and blend.labels_dtype(256) == np.uint8
    assert blend.labels_dtype(257) == np.uint16
    assert blend.labels_from_logits(np.zeros((300, 2, 2))).dtype == np.uint16


@pytest.mark.parametrize("k", [2, 3, 5])
def test_labels_are_the_argmax_with_ties_to_the_lower_class(k):
    logits = RNG.integers(-2, 3, size=(k, 40, 50)).astype(np.float32)  # many ties
    got = blend.labels_from_logits(logits)
    np.testing.assert_array_equal(got, logits.argmax(0))
    assert got.dtype == np.uint8 and got.shape == (40, 50)
    assert (logits.max(0) == logits[0]).sum() > 100 and (got == 0).sum() > 100
    np.testing.assert_array_equal(blend.labels_from_logits(logits[:, ::2, ::3]),
                                  logits[:, ::2, ::3].argmax(0))  # strided views too


@pytest.mark.parametrize(
    "out, classes, match",
    [
        (np.zeros((2, 3, 8)), None, "shape"),
        (np.zeros((3, 3, 8, 8)), None, "shape"),
        (np.zeros((2, 3, 8, 7)), None, "shape"),
        (np.zeros((2, 3, 8, 8)), 2, "3 classes"),
        (np.full((2, 3, 8, 8), np.inf), None, "non-finite"),
    ],
)
def test_check_model_output(out, classes, match):
    with pytest.raises(ModelOutputError, match=match):
        blend.check_model_output(out, (2, 1, 8, 8), classes)


def test_check_model_output_returns_float32():
    got = blend.check_model_output(np.ones((2, 3, 8, 8), np.float64), (2, 1, 8, 8))
    assert got.dtype == np.float32


def test_mapped_zeros():
    small = blend.mapped_zeros((3, 4), np.float32)
    assert small.dtype == np.float32 and (small == 0).all()
    big = blend.mapped_zeros((3, 300, 400), np.float32)
    assert big.shape == (3, 300, 400) and big.dtype == np.float32 and (big == 0).all()
    big[1, 2, 3] = 5  # writeable
    assert big.sum() == 5
