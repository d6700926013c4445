"""Per-chunk kernels in torch: the device-resident counterpart of :mod:`chunkseg.kernels.blend`.

When the model is a torch module, a block's whole life happens on the model's device (a GPU, or
the CPU): the raw input block is uploaded once, normalised, cut into tiles
(``Tensor.unfold``), run through the model in batches, weighted by the window and summed into the
accumulator with one ``torch.nn.functional.fold``; the overlap-add of the neighbours' pieces, the
division by the summed window, the softmax/sigmoid and the argmax run there too, and only the
requested outputs come back to the host, once per chunk, in their final dtype.

Layouts and results are those of :mod:`chunkseg.kernels.blend` (which stays the reference, and the
kernel for ONNX models and plain callables): an input block is ``(C_in, B_y, B_x)``, an
accumulator ``(K + 1, B_y, B_x)`` float32 holding ``sum(w * logits)`` in planes ``0..K-1`` and
``sum(w)`` in plane ``K``. Standard torch operations only.

On a GPU, one thread drives each device: the dask threads read and decode blocks, hand the
device work to that thread (:func:`on_device`) and wait for it without holding the GIL, then
encode and write the outputs, so reading, the model and writing overlap and the GPU never
competes with itself. cuDNN's autotuning cache (``torch.backends.cudnn.benchmark``) and its
handles are per thread, so with every dask thread driving the GPU each one re-tuned every
convolution: measured on an H100 with the shipped U-Net at 8192^2, 1 / 4 / 16 dask threads
driving the GPU took 0.71 / 1.68 / 15.9 s.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import ModelOutputError
from .blend import FLOAT16_MAX, check_model_output, labels_dtype, run_model

__all__ = [
    "on_device",
    "accumulate_block_torch",
    "fold_pieces_torch",
    "outputs_torch",
]

_DRIVERS: dict[str, ThreadPoolExecutor] = {}
_DRIVERS_GUARD = threading.Lock()


def on_device(device, fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` on the thread that drives ``device``; return its result.

    Parameters
    ----------
    device : torch.device or str
        For ``"cpu"`` the function runs in the calling thread (threads run side by side, one
        torch thread each). For an accelerator, on one long-lived thread per device and process
        (a ``ThreadPoolExecutor`` of one worker), in the order of submission; the caller waits
        without holding the GIL.
    fn : callable

    Returns
    -------
    object
        What ``fn`` returns; what it raises is raised here.
    """
    key = str(device)
    if key == "cpu":
        return fn(*args, **kwargs)
    with _DRIVERS_GUARD:
        driver = _DRIVERS.get(key)
        if driver is None:
            driver = _DRIVERS[key] = ThreadPoolExecutor(
                1, thread_name_prefix=f"chunkseg-{key.replace(':', '')}")
    return driver.submit(fn, *args, **kwargs).result()


def _torch():
    import torch

    return torch


def accumulate_block_torch(
    block: np.ndarray,
    module,
    window,
    overlap: tuple[int, int],
    *,
    device,
    normalization=None,
    batch_size: int = 8,
    classes: int | None = None,
    run: np.ndarray | None = None,
    keep_on_device: bool = True,
    then=None,
):
    """Run a torch module on every tile a block owns, on its device; weighted accumulation.

    Parameters
    ----------
    block : (C_in, B_y, B_x) ndarray
        Any numeric dtype (uint8 stays uint8 for the upload); ``B = m * stride + overlap``.
    module : torch.nn.Module
        Already on ``device`` and in eval mode; float32 ``(N, C_in, T_y, T_x)`` ->
        ``(N, K, T_y, T_x)``.
    window : (T_y, T_x) float32 tensor on ``device`` or ndarray
        Blending weights, strictly positive.
    overlap : (int, int)
    device : torch.device
    normalization : chunkseg.models.Normalization, optional
        ``(x * scale - mean) / std``, applied on the device to the whole block.
    batch_size : int, default 8
    classes : int, optional
        Expected ``K``; required when ``run`` may skip every tile.
    run : (m_y, m_x) ndarray of bool, optional
        Tiles to run; skipped tiles add nothing.
    keep_on_device : bool, default True
        Return the accumulator on ``device`` (else on the CPU).
    then : callable, optional
        Applied to the accumulator on the device's driving thread; its result is returned
        instead (the engine cuts the block into per-chunk pieces there).

    Returns
    -------
    (K + 1, B_y, B_x) float32 tensor
        As :func:`chunkseg.kernels.blend.accumulate_block`.

    Raises
    ------
    ModelOutputError
        If the model returns the wrong shape or non-finite values (the same messages as
        :func:`chunkseg.kernels.blend.check_model_output`).
    chunkseg.errors.ModelRunError
        If the model raises (:func:`chunkseg.kernels.blend.run_model`).

    Notes
    -----
    All tiles' logits of the block are held on the device at once, ``4 m_y m_x K T_y T_x``
    bytes (33 MiB for 64 tiles of 256^2 and 2 classes), and summed by one
    ``torch.nn.functional.fold`` (the adjoint of ``unfold``: overlapping tiles add up).
    """
    torch = _torch()

    device = torch.device(device)
    ty, tx = (int(t) for t in window.shape)
    sy, sx = ty - overlap[0], tx - overlap[1]
    c_in, by, bx = block.shape
    my, mx = (by - overlap[0]) // sy, (bx - overlap[1]) // sx
    if my * sy + overlap[0] != by or mx * sx + overlap[1] != bx or my < 1 or mx < 1:
        raise ValueError(f"block shape {block.shape} does not match the tile plan.")
    src = torch.from_numpy(np.ascontiguousarray(block))
    if device.type == "cuda":  # pinned, so that the upload does not wait for the GPU to drain
        src = src.pin_memory()
    out, wait = on_device(device, _accumulate_enqueue, src, module, window, device, (sy, sx),
                          (my, mx), normalization, batch_size, classes, run, then)
    finite = wait()["finite"]
    if not bool(finite):
        raise ModelOutputError(
            f"`model` returned non-finite values (NaN or inf) for a block of shape "
            f"{tuple(block.shape)}. Check the model's weights and input normalisation."
        )
    if keep_on_device or then is not None:
        return out
    return out.cpu()


def _accumulate_enqueue(src, module, window, device, stride, grid_shape, normalization,
                        batch_size, classes, run, then):
    """The device part of :func:`accumulate_block_torch`, on the device's driving thread:
    everything is queued on the GPU, nothing waited for but the model's output shape."""
    torch = _torch()
    (sy, sx), (my, mx) = stride, grid_shape
    c_in, by, bx = src.shape
    ty, tx = window.shape
    with torch.inference_mode():
        w = torch.as_tensor(window, device=device, dtype=torch.float32)
        x = _empty(tuple(src.shape), device)
        x.copy_(src, non_blocking=True)
        if normalization is not None and not normalization.is_identity:
            normalization.check_channels(c_in)
            mean = torch.tensor(normalization.mean, dtype=torch.float32).to(device)
            std = torch.tensor(normalization.std, dtype=torch.float32).to(device)
            x.mul_(float(normalization.scale)).sub_(mean.view(-1, 1, 1)).div_(std.view(-1, 1, 1))
        grid = x.unfold(1, ty, sy).unfold(2, tx, sx).permute(1, 2, 0, 3, 4)  # a view
        positions = [(i, j) for i in range(my) for j in range(mx) if run is None or run[i, j]]
        if classes is None and not positions:
            raise ValueError("`classes` must be given when `run` skips every tile of a block.")
        if device.type == "cpu":
            acc, finite = _accumulate_streaming(grid, positions, module, w, (sy, sx), (by, bx),
                                                batch_size, classes)
        else:
            acc, finite = _accumulate_fold(grid, positions, module, w, (sy, sx), (by, bx),
                                           batch_size, classes, run)
        del grid, x
        out = then(acc) if then is not None else acc
        if torch.is_tensor(finite):
            return out, _to_host_async({"finite": finite})
        return out, (lambda: {"finite": finite})


def _to_host_async(tensors: dict):
    """Start copying device tensors to the host; returns a function that waits and gives them.

    Called on the device's driving thread, so the copies queue behind its work; the wait
    happens in the calling thread, on a blocking CUDA event (the thread sleeps instead of
    spinning, leaving the CPU to the driving thread). On the CPU the tensors are returned as
    they are.
    """
    torch = _torch()
    first = next(iter(tensors.values()))
    if first.device.type != "cuda":
        return lambda: tensors
    host = {}
    for name, t in tensors.items():
        h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        h.copy_(t, non_blocking=True)
        host[name] = h
    event = torch.cuda.Event(blocking=True)
    event.record()

    def wait():
        event.synchronize()
        return host

    return wait


def _empty(shape: tuple[int, ...], device, zero: bool = False):
    """A float32 buffer on ``device`` (zero-filled where asked)."""
    torch = _torch()
    make = torch.zeros if zero else torch.empty
    return make(shape, dtype=torch.float32, device=device)


def _run_batches(grid, positions, module, batch_size, classes, tile):
    """Yield ``(positions, logits)`` per batch, the shape checked without a device sync."""
    torch = _torch()
    for i in range(0, len(positions), batch_size):
        pos = positions[i : i + batch_size]
        batch = torch.stack([grid[p] for p in pos])
        out = run_model(module, batch)
        if (out.ndim != 4 or out.shape[0] != batch.shape[0] or tuple(out.shape[2:]) != tile
                or (classes is not None and out.shape[1] != classes)):
            check_model_output(out.detach().float().cpu().numpy(), tuple(batch.shape), classes)
        yield pos, out.float()


def _accumulate_streaming(grid, positions, module, w, stride, shape, batch_size, classes):
    """CPU: each batch's logits added into the accumulator as they come (slice-adds beat
    ``col2im`` there: 3 against 17 ms for 64 tiles of 256^2), nothing block-sized held."""
    torch = _torch()
    ty, tx = w.shape
    acc, finite = None, True
    if classes is not None:
        acc = _empty((classes + 1,) + shape, "cpu", zero=True)
    for pos, out in _run_batches(grid, positions, module, batch_size, classes, (ty, tx)):
        if acc is None:
            classes = int(out.shape[1])
            acc = _empty((classes + 1,) + shape, "cpu", zero=True)
        # a finite sum means finite values (a sum overflowing to inf gets the exact test); the
        # sum costs a quarter of isfinite().all() on the CPU
        finite = finite and (bool(torch.isfinite(out.sum())) or bool(torch.isfinite(out).all()))
        for (i, j), logits in zip(pos, out):
            y, x = i * stride[0], j * stride[1]
            acc[:classes, y : y + ty, x : x + tx].addcmul_(logits, w)
            acc[classes, y : y + ty, x : x + tx].add_(w)
    return acc, finite


def _accumulate_fold(grid, positions, module, w, stride, shape, batch_size, classes, run):
    """GPU: all the block's logits in one buffer, weighted and summed by one
    ``torch.nn.functional.fold`` (two kernels instead of two per tile)."""
    torch = _torch()
    import torch.nn.functional as F

    ty, tx = w.shape
    my, mx = grid.shape[:2]
    device = w.device
    logits = None
    for pos, out in _run_batches(grid, positions, module, batch_size, classes, (ty, tx)):
        if logits is None:
            classes = int(out.shape[1])
            logits = torch.zeros((my * mx, classes, ty, tx), dtype=torch.float32,
                                 device=device)
        first = pos[0][0] * mx + pos[0][1]
        if run is None:  # consecutive tiles: a slice, no index upload (that would sync)
            logits[first : first + len(pos)] = out
        else:
            for n, (i, j) in enumerate(pos):
                logits[i * mx + j] = out[n]
    if logits is None:
        logits = torch.zeros((my * mx, classes, ty, tx), dtype=torch.float32, device=device)
    finite = torch.isfinite(logits).all()
    logits.mul_(w)
    acc = torch.empty((classes + 1,) + shape, dtype=torch.float32, device=device)
    cols = logits.reshape(my * mx, classes * ty * tx).t().unsqueeze(0)
    acc[:classes] = F.fold(cols, shape, (ty, tx), stride=stride)[0]
    wcols = w.reshape(1, ty * tx, 1).expand(1, ty * tx, my * mx)
    if run is not None:
        keep = torch.from_numpy(np.ascontiguousarray(run).reshape(-1)).to(device)
        wcols = wcols * keep.to(torch.float32).view(1, 1, -1)
    acc[classes] = F.fold(wcols, shape, (ty, tx), stride=stride)[0, 0]
    return acc, finite


def fold_pieces_torch(shape: tuple[int, ...], pieces: Sequence[tuple[tuple[slice, slice], object]]):
    """Overlap-add of accumulator pieces into one output chunk, on the pieces' device.

    Parameters
    ----------
    shape : (K + 1, H_c, W_c)
    pieces : sequence of ((slice, slice), tensor)
        As :func:`chunkseg.kernels.blend.fold_pieces`, with tensors.

    Returns
    -------
    (K + 1, H_c, W_c) float32 tensor
    """
    device = pieces[0][1].device
    return on_device(device, _fold_enqueue, tuple(shape), pieces)


def _fold_enqueue(shape, pieces):
    torch = _torch()
    with torch.inference_mode():
        out = _empty(shape, pieces[0][1].device, zero=True)
        for (dy, dx), piece in pieces:
            out[:, dy, dx] += piece
    return out


def outputs_torch(acc, names: Sequence[str], dtype=np.float32, fill_value: float = 0.0,
                  *, clamped: list | None = None) -> dict[str, np.ndarray]:
    """The requested outputs of a folded accumulator, computed on its device, as host arrays.

    Parameters
    ----------
    acc : (K + 1, y, x) float32 tensor
    names : sequence of {"logits", "probabilities", "labels", "covered"}
        ``covered``: where the weight sum is positive (some tile ran), a ``(y, x)`` bool array.
    dtype : {float32, float16}, default float32
        dtype of ``logits`` and ``probabilities``.
    fill_value : float, default 0.0
        Logits where the weight sum is 0 (no tile ran: only with a foreground mask).
    clamped : list, optional
        With float16 ``logits``: logits beyond +-65504 are clamped to it (as
        :class:`chunkseg.kernels.blend.LogitsCast`), and their number is appended to this list.

    Returns
    -------
    dict of ndarray
        ``logits``/``probabilities`` ``(K, y, x)`` of ``dtype``, ``labels`` ``(y, x)`` of
        :func:`chunkseg.kernels.blend.labels_dtype`; the same values as
        :func:`chunkseg.kernels.blend.normalize_accumulator`, :func:`~chunkseg.kernels.blend.probabilities_from_logits`
        and :func:`~chunkseg.kernels.blend.labels_from_logits` up to float32 rounding.
    """
    k = acc.shape[0] - 1
    wait = on_device(acc.device, _outputs_enqueue, acc, tuple(names), np.dtype(dtype),
                     fill_value)
    host = {name: t.numpy() for name, t in wait().items()}
    n_clamped = host.pop("clamped", None)
    if clamped is not None and n_clamped is not None:
        clamped.append(int(n_clamped))
    if "labels" in host:
        host["labels"] = host["labels"].astype(labels_dtype(k), copy=False)
    return host


def _outputs_enqueue(acc, names, dtype, fill_value):
    torch = _torch()
    tdtype = torch.float16 if dtype == np.float16 else torch.float32
    k = acc.shape[0] - 1
    out = {}
    with torch.inference_mode():
        weights = acc[-1:]
        logits = _empty(tuple(acc[:-1].shape), acc.device)
        torch.div(acc[:-1], weights, out=logits)
        logits.masked_fill_((weights <= 0).expand_as(logits), fill_value)  # no tile ran
        if "logits" in names and tdtype == torch.float16:  # clamped: never inf
            out["clamped"] = torch.count_nonzero(logits.abs() > FLOAT16_MAX)
            out["logits"] = logits.clamp(-FLOAT16_MAX, FLOAT16_MAX).to(tdtype)
        elif "logits" in names:
            out["logits"] = logits.to(tdtype)
        if "probabilities" in names:
            p = _empty(tuple(logits.shape), acc.device)
            if k == 1:
                torch.sigmoid(logits, out=p)
            else:  # softmax in place, the maximum subtracted
                torch.sub(logits, logits.max(dim=0, keepdim=True).values, out=p)
                p.exp_()
                p.div_(p.sum(dim=0, keepdim=True))
            out["probabilities"] = p.to(tdtype)
        if "labels" in names:
            out["labels"] = _argmax_planes(torch, logits, _torch_int(torch, labels_dtype(k)))
        if "covered" in names:
            out["covered"] = weights[0] > 0
        return _to_host_async(out)


def _argmax_planes(torch, logits, dtype):
    """Labels as :func:`chunkseg.kernels.blend.labels_from_logits`: plane by plane, ties (and NaN) to the
    lower class; ``logit > 0`` for one class. ``torch.argmax`` over the leading axis of a
    (2, 1536, 1536) tensor took 143 ms on the CPU, this loop a few."""
    k = logits.shape[0]
    if k == 1:
        return (logits[0] > 0).to(dtype)
    best = logits[0].clone()
    labels = torch.zeros(logits.shape[1:], dtype=dtype, device=logits.device)
    for c in range(1, k):
        better = logits[c] > best
        labels.masked_fill_(better, c)
        torch.maximum(best, logits[c], out=best)
    return labels


def _torch_int(torch, dt: np.dtype):
    return {1: torch.uint8, 2: torch.int16, 4: torch.int32}.get(np.dtype(dt).itemsize,
                                                              torch.int64)
