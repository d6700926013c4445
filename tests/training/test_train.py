"""chunkseg train: config, a short training that lowers the loss, exports, resume, early stop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("albumentations")

import chunkseg  # noqa: E402
from chunkseg.cli import main  # noqa: E402
from chunkseg.errors import InvalidValueError  # noqa: E402
from chunkseg.training.losses import build_loss  # noqa: E402
from chunkseg.training.train import TrainConfig, train  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def _blobs(seed: int, shape=(96, 96)) -> tuple[np.ndarray, np.ndarray]:
    """A learnable task: smooth random blobs (uint8) and their thresholded mask (0/255)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    field = gaussian_filter(rng.normal(size=shape), 4)
    field = (field - field.min()) / (field.max() - field.min())
    image = (field * 200 + rng.normal(0, 8, shape) + 20).clip(0, 255).astype(np.uint8)
    labels = np.where(field > 0.5, 255, 0).astype(np.uint8)
    return image, labels


def _write_pairs(tmp_path: Path, n: int, prefix: str, contrast: bool = False) -> list[dict]:
    """``n`` blob pairs as PNGs; ``contrast``: the image is the mask (60/170) plus noise."""
    from PIL import Image

    pairs = []
    for i in range(n):
        image, labels = _blobs(100 * len(prefix) + i)
        if contrast:
            noise = np.random.default_rng(i).normal(0, 25, labels.shape)
            image = (np.where(labels == 255, 170, 60) + noise).clip(0, 255).astype(np.uint8)
        ip, lp = tmp_path / f"{prefix}{i}_image.png", tmp_path / f"{prefix}{i}_labels.png"
        Image.fromarray(image).save(ip)
        Image.fromarray(labels).save(lp)
        pairs.append({"image": str(ip), "labels": str(lp)})
    return pairs


def _config(tmp_path: Path, **overrides) -> dict:
    cfg = {
        "train": _write_pairs(tmp_path, 2, "t"), "val": _write_pairs(tmp_path, 1, "v"),
        "out": str(tmp_path / "run"), "classes": ["background", "blob"],
        "label_map": {"0": 0, "255": 1}, "model": "unet",
        "model_options": {"base_channels": 4, "depth": 2}, "tile": 32, "samples": 64,
        "batch_size": 8, "epochs": 2, "lr": 1e-2, "loss": "ce", "augment": "flips",
        "val_tile": 48, "val_overlap": 16, "threads": 1, "seed": 0,
    }
    cfg.update(overrides)
    return cfg


def _fixed_batch(cfg: TrainConfig, norm):
    from chunkseg.training.patches import PatchDataset

    data = PatchDataset([tuple(p) for p in cfg.val], tile=32, stride=32, sampling="grid",
                        label_map=cfg.label_map, normalization=norm)
    xs, ys = zip(*(data[i] for i in range(len(data))))
    return torch.stack(xs), torch.stack(ys)


def test_two_epochs_lower_the_loss_and_write_every_file(tmp_path, capsys):
    cfg = TrainConfig.from_dict(_config(tmp_path))
    torch.manual_seed(cfg.seed)
    from chunkseg.models.architectures import build_model

    untrained = build_model("unet", in_channels=1, classes=2, base_channels=4, depth=2).eval()
    result = train(cfg, progress=False)
    norm = chunkseg.Normalization(**{k: v for k, v in json.loads(
        (result.out / "train.json").read_text())["normalization"].items()})
    x, y = _fixed_batch(cfg, norm)
    loss = build_loss("ce")
    with torch.no_grad():
        before, after = float(loss(untrained(x), y)), float(loss(result.model(x), y))
    assert after < 0.8 * before, (before, after)  # held-out patches, not the training ones
    assert [r["epoch"] for r in result.history] == [1, 2]
    assert result.history[-1]["iterations"] == 2 * (64 // 8)
    for name in ("checkpoint.pt", "best.pt", "metrics.csv", "metrics.json", "loss_curve.png",
                 "model.pt", "model.ts", "model.onnx", "train.json"):
        assert (result.out / name).is_file(), name
    rows = json.loads((result.out / "metrics.json").read_text())
    assert rows == json.loads(json.dumps(result.history))
    csv_lines = (result.out / "metrics.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and "val_pixel_error" in csv_lines[0]
    record = json.loads((result.out / "train.json").read_text())
    assert record["status"] == "done" and record["best"]["epoch"] in (1, 2)
    assert record["config"] == cfg.to_dict()


def test_exported_models_run_in_predict_like_the_network(tmp_path):
    cfg = TrainConfig.from_dict(_config(tmp_path, epochs=1))
    result = train(cfg, progress=False)
    norm = chunkseg.Normalization(**json.loads((result.out / "train.json").read_text())[
        "normalization"])
    image = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(cfg.val[0][0]))
    ref = chunkseg.predict(image, result.model, tile=48, overlap=16, normalization=norm,
                           outputs="logits").logits.values
    for name in ("model.ts", "model.onnx"):  # normalisation built in: raw pixels in
        got = chunkseg.predict(image, str(result.out / name), tile=48, overlap=16,
                               outputs="logits").logits.values
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("ema", [None, 0.9])
def test_resume_continues_as_if_uninterrupted(tmp_path, ema):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = train(TrainConfig.from_dict(_config(tmp_path / "a", out=str(tmp_path / "a/run"),
                                                ema=ema)), progress=False)

    class Stop(Exception):
        pass

    def stop(row):
        if row["epoch"] == 1:
            raise Stop

    cfg = TrainConfig.from_dict(_config(tmp_path / "b", out=str(tmp_path / "b/run"), ema=ema))
    with pytest.raises(Stop):
        train(cfg, progress=False, on_epoch_end=stop)
    assert not (tmp_path / "b/run/model.pt").exists()
    resumed = train(cfg, progress=False, resume=True)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6, err_msg=k)
    assert resumed.history[-1]["train_loss"] == pytest.approx(whole.history[-1]["train_loss"])


def test_resume_of_a_run_recorded_before_a_setting_existed(tmp_path):
    """A checkpoint whose config lacks a later setting (``device``) resumes at its default;
    one that differs from the default is still refused."""

    class Stop(Exception):
        pass

    def stop(row):
        raise Stop

    cfg = TrainConfig.from_dict(_config(tmp_path, epochs=2, export=[]))
    with pytest.raises(Stop):
        train(cfg, progress=False, on_epoch_end=stop)
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["device"]
    torch.save(state, path)
    assert [r["epoch"] for r in train(cfg, progress=False, resume=True).history] == [1, 2]
    state["config"]["ema"] = 0.5
    torch.save(state, path)
    with pytest.raises(ValueError, match=r"differ: \['ema'\]"):
        train(cfg, progress=False, resume=True)


def test_ema_is_the_moving_average_of_the_trained_weights(tmp_path, monkeypatch):
    """``ema=d``: the result is e_1 = w_1, e_t = d e_(t-1) + (1 - d) w_t over the weights w_t
    after each optimiser step (recorded here), while training itself is unchanged."""
    steps = []
    step = torch.optim.Adam.step

    def recording(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        steps.append([p.detach().clone() for g in self.param_groups for p in g["params"]])
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", recording)
    decay = 0.8
    plain = train(_config(tmp_path, out=str(tmp_path / "plain"), val=[]), progress=False)
    plain_steps, steps[:] = list(steps), []
    averaged = train(_config(tmp_path, out=str(tmp_path / "ema"), val=[], ema=decay),
                     progress=False)
    assert len(steps) == len(plain_steps) == 16  # 2 epochs x 64 patches / batch 8
    for a, b in zip(plain_steps[-1], steps[-1]):  # the average does not change training
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    expected = steps[0]
    for w in steps[1:]:
        expected = [decay * e + (1 - decay) * x for e, x in zip(expected, w)]
    got = list(averaged.model.parameters())
    assert len(got) == len(expected)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g.detach(), e, rtol=1e-5, atol=1e-6)
    raw = torch.load(tmp_path / "ema/checkpoint.pt", weights_only=True)["model"]
    assert not all(torch.equal(raw[k], v) for k, v in averaged.model.state_dict().items())
    del plain


@pytest.mark.parametrize("ema", [0, 1, 1.5, True, "0.9"])
def test_ema_must_be_a_decay(tmp_path, ema):
    with pytest.raises((TypeError, ValueError), match="`ema` must be a decay in"):
        TrainConfig.from_dict(_config(tmp_path, ema=ema))


def test_early_stopping(tmp_path):
    cfg = TrainConfig.from_dict(_config(tmp_path, epochs=6, lr=1e-12, patience=2,
                                        export=[]))
    result = train(cfg, progress=False)
    # lr ~ 0: the validation score never improves after epoch 1, so epochs 2 and 3 are stale
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert result.best["epoch"] == 1


def test_output_folder_rules(tmp_path):
    cfg = _config(tmp_path, epochs=1, export=[])
    foreign = tmp_path / "run"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(chunkseg.OutputExistsError, match="not a chunkseg training run"):
        train(cfg, progress=False)
    assert (foreign / "notes.txt").read_text() == "mine"
    (foreign / "notes.txt").unlink()
    train(cfg, progress=False)
    with pytest.raises(chunkseg.OutputExistsError, match="--resume"):
        train(cfg, progress=False)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(chunkseg.OutputExistsError, match="did not write"):
        train(cfg, progress=False, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"
    (foreign / "notes.txt").unlink()
    train(cfg, progress=False, overwrite=True)
    changed = dict(cfg, lr=0.5)
    with pytest.raises(ValueError, match="lr"):
        train(changed, progress=False, resume=True)


def test_config_file_round_trip_and_globs(tmp_path):
    cfg = _config(tmp_path)
    text = "\n".join([
        'out = "run"', 'classes = ["background", "blob"]', 'label_map = { "0" = 0, "255" = 1 }',
        'tile = 32', 'epochs = 3',
        '[[train]]', 'image = "t*_image.png"', 'labels = "t*_labels.png"',
        '[[val]]', 'image = "v0_image.png"', 'labels = "v0_labels.png"'])
    (tmp_path / "c.toml").write_text(text)
    got = TrainConfig.from_file(tmp_path / "c.toml")
    assert [p[0] for p in got.train] == [c["image"] for c in cfg["train"]]
    assert got.out == str(tmp_path / "run") and got.label_map == {0: 0, 255: 1}
    assert TrainConfig.from_dict(got.to_dict()) == got
    (tmp_path / "c.json").write_text(json.dumps(got.to_dict()))
    assert TrainConfig.from_file(tmp_path / "c.json") == got


def test_config_overrides(tmp_path, monkeypatch):
    """``--set KEY=VALUE`` replaces one setting; a dotted key one entry of a table; a path in
    an override is relative to the current directory, not to the config's folder."""
    text = "\n".join([
        'out = "run"', 'classes = ["background", "blob"]', 'tile = 32',
        'model_options = { base_channels = 4, depth = 2 }',
        '[[train]]', 'image = "t0_image.png"', 'labels = "t0_labels.png"'])
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "c.toml").write_text(text)
    monkeypatch.chdir(tmp_path)
    base = TrainConfig.from_file("conf/c.toml")
    got = TrainConfig.from_file("conf/c.toml", overrides=[
        "ema=0.999", "model_options.base_channels=8", "out=runs/wide", 'export=["onnx"]',
        "val_window = triangular"])
    assert got.ema == 0.999 and got.model_options == {"base_channels": 8, "depth": 2}
    assert got.out == str(tmp_path / "runs" / "wide") and got.export == ("onnx",)
    assert got.val_window == "triangular"
    assert Path(base.out).resolve() == tmp_path / "conf" / "run" and base.train == got.train
    changed = {"ema", "model_options", "out", "export", "val_window"}
    assert {k for k, v in got.to_dict().items() if base.to_dict()[k] != v} == changed
    pairs = TrainConfig.from_file(
        "conf/c.toml", ['train=[{image="data/a.png", labels="data/b.png"}]']).train
    assert pairs == ((str(tmp_path / "data" / "a.png"), str(tmp_path / "data" / "b.png")),)
    whole = TrainConfig.from_file("conf/c.toml", ["model_options={depth=3}"])
    assert whole.model_options == {"base_channels": 4, "depth": 3}
    with pytest.raises(ValueError, match="must be KEY=VALUE .* Got 'ema'"):
        TrainConfig.from_file("conf/c.toml", ["ema"])
    with pytest.raises(ValueError, match="unknown keys \\['colour'\\]"):
        TrainConfig.from_file("conf/c.toml", ["colour=1"])
    with pytest.raises(ValueError, match="setting name"):
        TrainConfig.from_file("conf/c.toml", ["two words=1"])
    with pytest.raises(TypeError, match="list of KEY=VALUE"):
        TrainConfig.from_file("conf/c.toml", "ema=0.9")


@pytest.mark.parametrize("change, exc, match", [
    ({"colour": 1}, ValueError, "unknown keys"),
    ({"classes": []}, ValueError, "`classes` must name"),
    ({"monitor": "iou_cat"}, ValueError, "`monitor` must be"),
    ({"tile": 30}, ValueError, "multiples of 4"),
    ({"sampling": "poisson"}, ValueError, "`sampling` must be one of"),
    ({"loss": "hinge"}, ValueError, "`loss` names"),
    ({"label_map": {"0": 0, "255": 7}}, ValueError, "class indices"),
    ({"train": [{"image": "nothere*.png", "labels": "nope*.png"}]}, FileNotFoundError,
     "patterns must match"),
    ({"model": "resnet"}, ValueError, "`model.name` must be one of"),
    ({"device": 0}, TypeError, "`device` must be a torch device name"),
    ({"device": "toaster"}, ValueError, "`device` must be a torch device such as"),
    pytest.param({"device": "cuda:0"}, ValueError, "not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="has a GPU")),
])
def test_bad_configs_refused_before_writing(tmp_path, change, exc, match):
    cfg = _config(tmp_path, **change)
    with pytest.raises(exc, match=match):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_train(tmp_path, capsys):
    cfg = _config(tmp_path, epochs=1, export=["torchscript"])
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "c.json"), "--no-progress"]) == 0
    assert "epoch 1/1" in capsys.readouterr().out
    assert (tmp_path / "run" / "model.ts").is_file()
    assert main(["train", str(tmp_path / "c.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("chunkseg train: error:") and len(err.strip().splitlines()) == 1
    assert main(["train", str(tmp_path / "missing.toml")]) == 2
    capsys.readouterr()
    assert main(["train", str(tmp_path / "c.json"), "--no-progress", "--set", "epochs=2",
                 "--set", f"out={tmp_path / 'run2'}"]) == 0
    assert "epoch 2/2" in capsys.readouterr().out
    record = json.loads((tmp_path / "run2" / "train.json").read_text())
    assert record["config"]["epochs"] == 2 and (tmp_path / "run2" / "model.ts").is_file()
    assert main(["train", str(tmp_path / "c.json"), "--set", "epochs"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_isbi_config_parses():
    cfg = TrainConfig.from_file(ROOT / "configs" / "isbi2012_unet.toml")
    assert len(cfg.train) == 20 and len(cfg.val) == 5
    assert Path(cfg.val[0][0]).name == "20.png" and Path(cfg.train[-1][0]).name == "19.png"
    ema = TrainConfig.from_file(ROOT / "configs" / "isbi2012_unet.toml",
                                ["ema=0.999", "epochs=200"])
    assert (ema.ema, ema.epochs, ema.train, ema.model_options) == (
        0.999, 200, cfg.train, cfg.model_options)


def test_data_errors_leave_an_earlier_run_in_place(tmp_path):
    """Checks that need the data (batch size against the patches, normalisation) come before
    ``overwrite`` clears the folder."""
    cfg = _config(tmp_path, epochs=1, export=[])
    train(cfg, progress=False)
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(ValueError, match="`batch_size` must be at most"):
        train(dict(cfg, batch_size=1000), progress=False, overwrite=True)
    with pytest.raises(ValueError, match="`normalization` must be"):
        train(dict(cfg, normalization="auto"), progress=False, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_training_on_a_gpu_saves_weights_that_run_on_the_cpu(tmp_path):
    result = train(_config(tmp_path, device="cuda", export=["torchscript"]), progress=False)
    assert next(result.model.parameters()).device.type == "cpu"
    for name in ("model.pt", "best.pt"):
        state = torch.load(tmp_path / "run" / name, weights_only=True)
        assert {v.device.type for v in state.values()} == {"cpu"}
    image = np.asarray(_blobs(7)[0])
    got = chunkseg.predict(image, str(tmp_path / "run" / "model.ts"), tile=48, overlap=16,
                           outputs="labels").labels.values
    assert got.shape == image.shape


def test_a_failed_overwrite_leaves_the_earlier_run_whole_and_resume_swaps_it_in(tmp_path):
    """Replace only on success: the new run is built beside the old one."""
    import hashlib

    cfg = _config(tmp_path, epochs=2, export=[])
    train(cfg, progress=False)
    run = tmp_path / "run"

    def digest():
        return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.iterdir()}

    before = digest()

    def stop(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt  # a run killed part-way

    changed = dict(cfg, lr=5e-3)
    with pytest.raises(KeyboardInterrupt):
        train(changed, progress=False, overwrite=True, on_epoch_end=stop)
    assert digest() == before  # the earlier run, byte for byte
    staging = tmp_path / ".run.chunkseg-new"
    assert (staging / "checkpoint.pt").is_file()
    assert not (tmp_path / ".run.chunkseg-lease").exists()  # released on the way out
    result = train(changed, progress=False, resume=True)
    assert result.out == run and not staging.exists()
    assert json.loads((run / "train.json").read_text())["config"]["lr"] == 5e-3
    assert all(p.parent == run and p.is_file() for p in result.files.values())
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == []


def test_v_rand_monitor_is_the_instance_path_a_user_runs(tmp_path):
    """``monitor="v_rand"`` with the U-Net weight-map loss: the best epoch is the one of highest
    val_v_rand, and its scores are those of predict_to_zarr -> label(watershed) ->
    evaluate_instances run on the result against the truth's components (scipy)."""
    from scipy import ndimage

    cfg = TrainConfig.from_dict(_config(  # high contrast: probabilities over the seed threshold
        tmp_path, train=_write_pairs(tmp_path, 2, "t", contrast=True),
        val=_write_pairs(tmp_path, 2, "v", contrast=True), epochs=4, lr=0.03, samples=128,
        monitor="v_rand", loss=[{"name": "unet_weighted", "w0": 10, "sigma": 3}],
        object_class="blob"))
    result = train(cfg, progress=False)
    rows = json.loads((result.out / "metrics.json").read_text())
    scored = [r["val_v_rand"] for r in rows]
    assert result.best["epoch"] == rows[int(np.argmax(scored))]["epoch"]
    assert "train_unet_weighted" in rows[0] and "val_v_info" in rows[0]
    assert "val_v_rand" in (result.out / "metrics.csv").read_text().splitlines()[0]
    norm = chunkseg.Normalization(**json.loads(
        (result.out / "train.json").read_text())["normalization"])
    v_rand, v_info = [], []
    for n, (image, labels) in enumerate(cfg.val):
        store = tmp_path / f"check{n}.zarr"
        chunkseg.predict_to_zarr(image, result.model, store, tile=48, overlap=16,
                                 normalization=norm, outputs=("labels", "probabilities"),
                                 classes=list(cfg.classes))
        chunkseg.label(store, cls="blob", method="watershed")
        truth, _ = ndimage.label(np.asarray(chunkseg.open_image(labels).data[..., 0]) == 255)
        scores = chunkseg.evaluate_instances(store, truth)
        v_rand.append(scores["v_rand"])
        v_info.append(scores["v_info"])
    assert len(set(scored)) > 1 and 0.5 < np.mean(v_rand) < 1
    assert result.best["val_v_rand"] == pytest.approx(np.mean(v_rand), rel=1e-9)
    assert result.best["val_v_info"] == pytest.approx(np.mean(v_info), rel=1e-9)


def test_instance_monitor_needs_an_object_class(tmp_path):
    with pytest.raises(InvalidValueError, match="object_class"):
        TrainConfig.from_dict(_config(tmp_path, classes=["background", "membrane"],
                                      monitor="v_rand"))
    with pytest.raises(InvalidValueError, match="object_class"):
        TrainConfig.from_dict(_config(tmp_path, object_class="cell"))
    with pytest.raises(InvalidValueError, match="send a stored value to the object class 1"):
        TrainConfig.from_dict(_config(tmp_path, monitor="v_rand", label_map={"0": 0}))
    assert TrainConfig.from_dict(_config(tmp_path, monitor="v_info")).object_index() == 1


def test_isbi_boundary_config_parses():
    cfg = TrainConfig.from_file(ROOT / "configs" / "isbi2012_unet_boundary.toml")
    plain = TrainConfig.from_file(ROOT / "configs" / "isbi2012_unet.toml")
    assert (cfg.monitor, cfg.object_index(), cfg.epochs, cfg.val_every) == ("v_rand", 0, 100, 10)
    assert cfg.loss == [{"name": "unet_weighted", "w0": 10, "sigma": 5}]
    assert (cfg.train, cfg.val, cfg.model_options, cfg.label_map, cfg.normalization) == (
        plain.train, plain.val, plain.model_options, plain.label_map, plain.normalization)
