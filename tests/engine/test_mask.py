"""Skipping background: a low-resolution mask or a per-chunk predicate keeps tiles from the model."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from reference import conv_model

import chunkseg
from chunkseg.plan import plan_tiles, tile_mask

RNG = np.random.default_rng(5)


def _reference_tile_mask(plan, mask):
    """Per tile, per image pixel: does any covered image pixel map to a foreground mask pixel?"""
    h, w = plan.image_shape
    my, mx = mask.shape
    up = mask[(np.arange(h) * my) // h][:, (np.arange(w) * mx) // w] > 0  # nearest upsampling
    oy, ox = plan.tile_origins()
    out = np.zeros(plan.grid_shape, bool)
    for i, y in enumerate(oy):
        for j, x in enumerate(ox):
            out[i, j] = up[max(y, 0) : max(y + plan.tile[0], 0), max(x, 0) : max(x + plan.tile[1], 0)].any()
    return out


@pytest.mark.parametrize("mask_shape", [(10, 13), (37, 41), (203, 171)])
def test_tile_mask_matches_pixel_reference(mask_shape):
    plan = plan_tiles((203, 171), 40, 10, 60)
    mask = RNG.random(mask_shape) > 0.85
    np.testing.assert_array_equal(tile_mask(plan, mask), _reference_tile_mask(plan, mask))


def test_tile_mask_errors():
    plan = plan_tiles((100, 100), 32, 8)
    with pytest.raises(ValueError, match="mask"):
        tile_mask(plan, np.ones((5,)))
    with pytest.raises(ValueError, match="low-resolution"):
        tile_mask(plan, np.ones((200, 10)))


class Counting:
    def __init__(self, model):
        self.model, self.tiles, self.lock = model, 0, threading.Lock()

    def __call__(self, batch):
        with self.lock:
            self.tiles += len(batch)
        return self.model(batch)


def test_array_mask_skips_background_tiles():
    image = RNG.random((300, 280, 1)).astype(np.float32)
    base = conv_model(RNG.normal(size=(2, 1, 3, 3)))
    mask = np.zeros((30, 28), bool)
    mask[3:12, 5:14] = True  # image pixels 30..120 x 50..140
    tile, overlap, chunks = 48, 16, 64
    plan = plan_tiles(image.shape, tile, overlap, chunks)
    counting = Counting(base)
    ds = chunkseg.predict(image, counting, tile=tile, overlap=overlap, chunks=chunks, mask=mask,
                          outputs="logits,probabilities,labels")
    done = ds.compute()  # one pass over the graph for the three outputs
    logits, probs, labels = done.logits.values, done.probabilities.values, done.labels.values
    expected_tiles = int(tile_mask(plan, mask).sum())
    assert counting.tiles == expected_tiles + 1  # + the first-tile probe
    assert expected_tiles < plan.n_tiles / 3
    full = chunkseg.predict(image, base, tile=tile, overlap=overlap, chunks=chunks,
                            outputs="logits").logits.values
    # deep inside the foreground every covering tile ran: identical to the unmasked result
    np.testing.assert_array_equal(logits[:, 30 + tile : 120 - tile + 48, 50 + 16 : 140 - 16],
                                  full[:, 30 + tile : 120 - tile + 48, 50 + 16 : 140 - 16])
    # far from it no tile ran: documented fill values
    assert np.isnan(logits[:, 250:, 220:]).all() and np.isnan(probs[:, 250:, 220:]).all()
    assert (labels[250:, 220:] == 0).all()
    assert ds.attrs["mask"] == "array"


def test_predicate_skips_whole_chunks():
    image = np.zeros((256, 256, 1), np.float32)
    image[:64, :64] = RNG.random((64, 64, 1))  # foreground only in the top-left chunk
    counting = Counting(conv_model(RNG.normal(size=(2, 1, 3, 3))))
    plan = plan_tiles(image.shape, 48, 16, 64)
    ds = chunkseg.predict(image, counting, tile=48, overlap=16, chunks=64,
                          mask=lambda block: bool(block.max() > 0), outputs="logits")
    logits = ds.logits.values
    # only the block that holds the foreground ran (its tiles overhang into its neighbours)
    (k0, k1), (l0, l1) = plan.owned_tiles()[0][0], plan.owned_tiles()[1][0]
    assert counting.tiles - 1 == (k1 - k0) * (l1 - l0) < plan.n_tiles / 2
    assert np.isnan(logits[:, 200:, 200:]).all()
    assert np.isfinite(logits[:, :40, :40]).all()
