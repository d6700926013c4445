"""The command's error line speaks in options (``--overwrite``), not in the Python API's
keywords (``overwrite=True``), while the API's own messages stay as they are."""

from __future__ import annotations

import re

import numpy as np
import pytest
import zarr

from chunkseg._cli_parser import build_parser
from chunkseg.cli import _cli_terms, main
from chunkseg.errors import ChunksegError

MODEL = ["--model", "model_factories:numpy_two_class"]


def _error_line(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "=True" not in err and "CLI:" not in err and "(CLI" not in err
    return lines[0]


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.zarr"
    zarr.save_array(path, np.random.default_rng(0).integers(0, 256, (96, 80, 1), np.uint8))
    return path


def test_existing_output_names_overwrite(tmp_path, image, capsys):
    out = tmp_path / "copy.zarr"
    assert main(["ingest", str(image), str(out)]) == 0
    capsys.readouterr()
    line = _error_line(capsys, ["ingest", str(image), str(out)])
    assert line.startswith("chunkseg ingest: error: `store` must be empty or absent unless "
                           "`--overwrite`.")
    assert "pass `--overwrite` to replace" in line
    # the Python API says it in its own terms
    from chunkseg._ingest import ingest

    with pytest.raises(ChunksegError, match=re.escape("`overwrite=True` (CLI: `--overwrite`)")):
        ingest(image, out)


def test_bad_tile_names_tile_and_overlap(capsys):
    line = _error_line(capsys, ["plan", "1000x1000", "--tile", "64", "--overlap", "64"])
    assert line == ("chunkseg plan: error: `--overlap` must be smaller than `--tile` (stride = "
                    "tile - overlap must be positive). Got --overlap 64,64, --tile 64,64. Use "
                    "e.g. --overlap 16.")
    line = _error_line(capsys, ["plan", "1000x1000", "--tile", "0"])
    assert line == "chunkseg plan: error: `--tile` must be positive. Got 0."
    line = _error_line(capsys, ["plan", "1000x1000", "--classes", "0"])
    assert line.endswith("`--classes` must be a positive int. Got 0. The model's number of classes, "
                         "e.g. 2.")


def test_resume_on_a_non_output(tmp_path, image, capsys):
    foreign = tmp_path / "foreign.zarr"
    zarr.open_group(foreign, mode="w")
    line = _error_line(capsys, ["predict", str(image), str(foreign), *MODEL, "--resume",
                                "--no-progress"])
    assert "chunkseg did not write" in line and "even with --overwrite" in line


def test_label_on_unfinished_output_names_the_command(tmp_path, image, capsys):
    out = tmp_path / "seg.zarr"
    assert main(["predict", str(image), str(out), *MODEL, "--tile", "48", "--overlap", "16",
                 "--chunk", "48", "--no-progress"]) == 0
    zarr.open_group(out, mode="r+").attrs["complete"] = False  # as an interrupted run leaves it
    capsys.readouterr()
    line = _error_line(capsys, ["label", str(out)])
    assert line.endswith("incomplete; finish it first with chunkseg predict ... --resume.")


def test_translation_table():
    parser = build_parser()
    cases = [
        ("predict", "Write dtype='float32' (CLI: --dtype float32) to keep",
         "Write --dtype float32 to keep"),
        ("predict", "Use 'cpu' (CLI: --device cpu), or 'cuda'.",  # aside not redundant: kept
         "Use 'cpu' (--device cpu), or 'cuda'."),
        ("predict", "Pass `array_name=` with one of them (CLI: `--array-name`).",
         "Pass `--array-name` with one of them."),
        ("predict", "`chunks` must be positive", "`--chunk` must be positive"),
        ("label", "`cls` must be a class (CLI: --class NAME or --class INDEX)",
         "`--class` must be a class"),
        ("regions", "make it with chunkseg.instances (CLI: chunkseg label).",
         "make it with chunkseg label."),
        ("figures", "must be an output of chunkseg.predict_to_zarr. Got 'x'",
         "must be an output of chunkseg predict. Got 'x'"),
        ("seams", "raise `max_pixels` (CLI --max-pixels) if", "raise `--max-pixels` if"),
        # not options of the command: unchanged
        ("export-bioimageio", "`out` must be a folder", "`out` must be a folder"),
        ("predict", "Got cls=None and ome=False", "Got cls=None and ome=False"),
        ("plan", "`store` holds tile=(1, 2)", "`store` holds --tile 1,2"),
    ]
    for command, message, expected in cases:
        assert _cli_terms(message, parser, command) == expected
