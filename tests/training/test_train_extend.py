"""``chunkseg train CONFIG --resume --set epochs=N``: a finished run goes on to N epochs."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("albumentations")

from test_train import _config  # noqa: E402

from chunkseg.cli import main  # noqa: E402
from chunkseg.errors import InvalidValueError  # noqa: E402
from chunkseg.training.train import train  # noqa: E402


def test_extending_a_finished_run_equals_the_longer_run(tmp_path):
    """With a constant learning rate nothing depends on ``epochs``: two epochs, then one more
    from the checkpoint, are the three-epoch run, weights and log."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    whole = train(_config(tmp_path / "a", out=str(tmp_path / "a/run"), epochs=3,
                          schedule="constant", export=[]), progress=False)
    short = _config(tmp_path / "b", out=str(tmp_path / "b/run"), epochs=2,
                    schedule="constant", export=[])
    first = train(short, progress=False)
    assert [r["epoch"] for r in first.history] == [1, 2]
    longer = train(dict(short, epochs=3), progress=False, resume=True)
    assert [r["epoch"] for r in longer.history] == [1, 2, 3]
    for (k, a), b in zip(whole.model.state_dict().items(), longer.model.state_dict().values()):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-6, err_msg=k)
    for got, want in zip(longer.history, whole.history):
        assert got["train_loss"] == pytest.approx(want["train_loss"])
        assert got["val_pixel_error"] == pytest.approx(want["val_pixel_error"])
    record = json.loads((tmp_path / "b/run/train.json").read_text())
    assert record["status"] == "done" and record["epochs_run"] == 3
    assert record["config"]["epochs"] == 3
    # finished at 3: the same or fewer epochs is refused, and the run is left as it is
    before = (tmp_path / "b/run/checkpoint.pt").read_bytes()
    for epochs in (3, 2):
        with pytest.raises(InvalidValueError, match="already finished"):
            train(dict(short, epochs=epochs), progress=False, resume=True)
    assert (tmp_path / "b/run/checkpoint.pt").read_bytes() == before
    # other settings must still match
    with pytest.raises(InvalidValueError, match=r"\['lr'\]"):
        train(dict(short, epochs=4, lr=0.5), progress=False, resume=True)


def test_cli_resume_set_epochs(tmp_path, capsys):
    cfg = _config(tmp_path, epochs=1, export=["torchscript"])
    (tmp_path / "c.json").write_text(json.dumps(cfg))
    assert main(["train", str(tmp_path / "c.json"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["train", str(tmp_path / "c.json"), "--no-progress", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already finished" in err[0], err
    assert "--set epochs=11" in err[0] and "CLI:" not in err[0]
    assert main(["train", str(tmp_path / "c.json"), "--no-progress", "--resume",
                 "--set", "epochs=2"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "epoch 2/2" in out and "epoch 1/" not in out
    record = json.loads((tmp_path / "run" / "train.json").read_text())
    assert record["status"] == "done" and record["epochs_run"] == 2
    assert [r["epoch"] for r in json.loads((tmp_path / "run" / "metrics.json").read_text())] \
        == [1, 2]
