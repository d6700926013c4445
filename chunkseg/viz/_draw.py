"""What the figures share: colours, a Figure outside pyplot, display RGB and axes helpers.

matplotlib is imported inside the functions that need it (it is optional).
"""

from __future__ import annotations

import numpy as np

from ..plan import TilePlan

_TILE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#e377c2", "#17becf",
                 "#bcbd22", "#8c564b", "#ffd60a")
_CHUNK_COLOUR = "#ff2a2a"
_CROP_COLOUR = "#ffd60a"
_PATCH_COLOUR = "#00e5ff"
_CLASS_COLOURS = ("#1b1b1b", "#f2f2f2", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd",
                  "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _figure(figsize: tuple[float, float]):
    """A matplotlib Figure outside pyplot (no global state; ``savefig`` renders with Agg)."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _scaler(sample: np.ndarray):
    """Map pixels of ``sample``'s dtype to [0, 1] for display (uint8 / 255, else percentiles)."""
    if sample.dtype == np.uint8:
        return lambda a: a.astype(np.float32) / 255.0
    if sample.dtype == bool:
        return lambda a: a.astype(np.float32)
    finite = sample[np.isfinite(sample)] if sample.dtype.kind == "f" else sample
    lo, hi = (np.percentile(finite, (0.5, 99.5)) if finite.size else (0.0, 1.0))
    span = float(hi - lo) or 1.0
    return lambda a: np.clip((a.astype(np.float32) - lo) / span, 0, 1)


def _display(pixels: np.ndarray, scale=None) -> np.ndarray:
    """``(h, w, c)`` pixels -> ``(h, w, 3)`` float32 RGB in [0, 1] (grey for one channel)."""
    scale = scale or _scaler(pixels)
    c = pixels.shape[-1]
    if c in (3, 4):
        return scale(pixels[..., :3])
    g = scale(pixels[..., 0])
    return np.repeat(g[..., None], 3, axis=-1)


def _id_colours(ids: np.ndarray, salt: int = 0) -> np.ndarray:
    """``(h, w, 3)`` float32: a fixed pseudo-random colour per id (a hash of id and salt)."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    with np.errstate(over="ignore"):
        x = uniq.astype(np.uint64) + np.uint64(salt + 1) * np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    rgb = np.stack([(x >> np.uint64(s)) & np.uint64(255) for s in (0, 8, 16)], -1)
    rgb = 0.2 + 0.8 * rgb.astype(np.float32) / 255.0
    rgb *= np.maximum(1.0, 0.75 / rgb.max(axis=-1, keepdims=True))  # no near-black colours
    return rgb[inverse.reshape(ids.shape)]


def _instance_rgb(ids: np.ndarray, base: np.ndarray | None = None, alpha: float = 0.6,
                  salt: int = 0) -> np.ndarray:
    """Objects (ids > 0) in their colours over ``base`` (``(h, w, 3)``; black if None)."""
    out = np.zeros(ids.shape + (3,), np.float32) if base is None else base.copy()
    fg = ids > 0
    if fg.any():
        colours = _id_colours(ids[fg], salt)
        out[fg] = colours if base is None else (1 - alpha) * out[fg] + alpha * colours
    return out


def _class_rgb(labels: np.ndarray, base: np.ndarray | None = None,
               alpha: float = 0.45) -> np.ndarray:
    from matplotlib.colors import to_rgb

    palette = np.array([to_rgb(c) for c in _CLASS_COLOURS], np.float32)
    rgb = palette[np.asarray(labels, np.int64) % len(palette)]
    return rgb if base is None else (1 - alpha) * base + alpha * rgb


def _imshow(ax, rgb: np.ndarray, origin: tuple[int, int], step: int = 1, **kw):
    """Show an image whose pixel ``(i, j)`` is image pixel ``origin + (i, j) * step``."""
    y0, x0 = origin
    h, w = rgb.shape[:2]
    return ax.imshow(rgb, extent=(x0 - 0.5, x0 + w * step - 0.5, y0 + h * step - 0.5, y0 - 0.5),
                     interpolation="nearest", **kw)


def _set_view(ax, crop) -> None:
    (y0, y1), (x0, x1) = crop
    ax.set_xlim(x0 - 0.5, x1 - 0.5)
    ax.set_ylim(y1 - 0.5, y0 - 0.5)


def _chunk_borders(ax, plan: TilePlan, crop, **kw) -> None:
    (y0, y1), (x0, x1) = crop
    style = {"color": _CHUNK_COLOUR, "lw": 1.6, "ls": "--"} | kw
    for c in np.cumsum(plan.output_chunks()[0])[:-1]:
        if y0 < c < y1:
            ax.plot([x0 - 0.5, x1 - 0.5], [c - 0.5, c - 0.5], **style)
    for c in np.cumsum(plan.output_chunks()[1])[:-1]:
        if x0 < c < x1:
            ax.plot([c - 0.5, c - 0.5], [y0 - 0.5, y1 - 0.5], **style)


def _box(ax, crop, **kw):
    from matplotlib.patches import Rectangle

    (y0, y1), (x0, x1) = crop
    return ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, **kw))


def _outlined(**kw) -> dict:
    import matplotlib.patheffects as pe

    return {"path_effects": [pe.withStroke(linewidth=2.5, foreground="black")], **kw}


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 < 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"
