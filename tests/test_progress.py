"""Progress on stderr (chunkseg.progress, chunkseg.scheduling.compute): one labelled stage per
step, stdout for results only, log lines when stderr is not a terminal, --no-progress."""

from __future__ import annotations

import io
import math
import re
import time

import dask
import numpy as np
import pytest

from chunkseg import progress as prog
from chunkseg.cli import main
from chunkseg.scheduling import compute

MODEL = "model_factories:numpy_two_class"
# the last line of a finished stage in a log
END = r"chunkseg: {label}: {n}/{n} \(100%\) \d+:\d\d:\d\d, done"


def _png(path, shape=(150, 170)):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, shape).astype(np.uint8)).save(path)
    return str(path)


def _stage_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith(prog.PREFIX)]


def test_cli_predict_prints_its_result_on_stdout_and_its_stages_on_stderr(tmp_path, capfd):
    src, out = _png(tmp_path / "in.png"), tmp_path / "out.zarr"
    code = main(["predict", src, str(out), "--model", MODEL, "--tile", "32", "--overlap", "8",
                 "--chunk", "64", "--ome", "--levels", "2"])
    captured = capfd.readouterr()
    assert code == 0, captured.err
    # stdout: the one result line, nothing else (dask's ProgressBar printed bars there)
    assert captured.out.splitlines() == [
        f"wrote {out}: logits (2, 150, 170) float32, labels (150, 170) uint8"]
    n = math.ceil(150 / 64) * math.ceil(170 / 64)  # 3 x 3 chunks
    lines = _stage_lines(captured.err)
    # not a terminal (captured): a start and an end line per stage, no carriage return
    assert "\r" not in captured.err
    assert lines[0] == "chunkseg: loading the model: started"
    assert re.fullmatch(r"chunkseg: loading the model: \d+:\d\d:\d\d, done", lines[1])
    assert lines[2] == f"chunkseg: predicting {n} chunks: started"
    assert re.fullmatch(END.format(label=f"predicting {n} chunks", n=n), lines[3])
    assert lines[4] == "chunkseg: pyramid level 1: started"
    assert re.fullmatch(r"chunkseg: pyramid level 1: (\d+)/\1 \(100%\) \d+:\d\d:\d\d, done",
                        lines[5])
    assert len(lines) == 6


def test_no_progress_leaves_stderr_without_progress(tmp_path, capfd):
    src, out = _png(tmp_path / "in.png"), tmp_path / "out.zarr"
    assert main(["predict", src, str(out), "--model", MODEL, "--tile", "32", "--overlap", "8",
                 "--chunk", "64", "--no-progress"]) == 0
    captured = capfd.readouterr()
    assert _stage_lines(captured.err) == [] and "chunks" not in captured.err
    assert captured.out.startswith(f"wrote {out}:") and captured.out.count("\n") == 1
    # the API's default is no progress either
    from chunkseg import predict_to_zarr

    predict_to_zarr(src, MODEL, tmp_path / "api.zarr", tile=32, overlap=8, chunks=64)
    assert capfd.readouterr().err == ""


def test_seams_and_figures_commands_report_their_stages(tmp_path, capfd):
    src, out = _png(tmp_path / "in.png", (48, 56)), tmp_path / "out.zarr"
    assert main(["seams", src, "--model", MODEL, "--tile", "16", "--overlap", "4",
                 "--windows", "gaussian,cosine", "--out", str(tmp_path / "r")]) == 0
    captured = capfd.readouterr()
    assert "mean |logit - reference|" in captured.out and prog.PREFIX not in captured.out
    lines = _stage_lines(captured.err)
    assert [ln.rpartition(": ")[0] for ln in lines] == [
        "chunkseg: loading the model", "chunkseg: loading the model",
        "chunkseg: seams: whole-image reference pass",
        "chunkseg: seams: whole-image reference pass",
        "chunkseg: seams: 4 tilings", "chunkseg: seams: 4 tilings"]
    assert re.fullmatch(END.format(label="seams: 4 tilings", n=4), lines[-1])

    assert main(["predict", src, str(out), "--model", MODEL, "--tile", "16", "--overlap", "4",
                 "--no-progress"]) == 0
    capfd.readouterr()
    assert main(["figures", str(out), str(tmp_path / "figs"), "--image", src, "--model",
                 MODEL]) == 0
    captured = capfd.readouterr()
    assert len(captured.out.splitlines()) == 5 and prog.PREFIX not in captured.out
    lines = _stage_lines(captured.err)
    assert lines[0] == "chunkseg: loading the model: started"
    assert lines[2] == "chunkseg: drawing 5 figures: started"
    assert re.fullmatch(END.format(label="drawing 5 figures", n=5), lines[3])
    assert main(["figures", str(out), str(tmp_path / "figs"), "--overwrite",
                 "--no-progress"]) == 0
    assert _stage_lines(capfd.readouterr().err) == []


def _chunk_graph(n_chunks: int, reads_per_chunk: int):
    """A graph like a prediction's: each chunk task needs its own reads, one task sums them."""
    reads = [[dask.delayed(int, pure=False)(r) for r in range(reads_per_chunk)]
             for _ in range(n_chunks)]
    chunks = [dask.delayed(sum, pure=False)(rs) for rs in reads]
    total = dask.delayed(sum, pure=False)(chunks)
    return total, [c.key for c in chunks]


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_the_local_callback_counts_exactly_the_tasks_asked(scheduler, capsys):
    total, chunk_keys = _chunk_graph(7, 3)
    # count: the 7 chunk tasks, not their 21 reads nor the sum
    assert compute(total, scheduler=scheduler, progress=True, label="predicting 7 chunks",
                   count=chunk_keys) == (21,)
    lines = _stage_lines(capsys.readouterr().err)
    assert lines[0] == "chunkseg: predicting 7 chunks: started"
    assert re.fullmatch(END.format(label="predicting 7 chunks", n=7), lines[1])
    # no count: every task that ran (7 chunks + 21 reads + the sum), as dask counts them
    seen = []

    class Count(dask.callbacks.Callback):
        def _posttask(self, key, result, dsk, state, worker_id):
            seen.append(key)

    with Count():
        assert compute(total, scheduler=scheduler, progress=True, label="all") == (21,)
    assert len(seen) == 7 + 21 + 1
    assert re.fullmatch(END.format(label="all", n=29), _stage_lines(capsys.readouterr().err)[1])


def test_a_cluster_counts_the_asked_keys_as_they_finish(capsys):
    from chunkseg.scheduling import local_cluster

    total, chunk_keys = _chunk_graph(5, 2)
    with local_cluster(1) as client:
        assert compute(total, scheduler=client, progress=True, label="p", count=chunk_keys) \
            == (5,)  # 5 chunks of 0 + 1
        lines = _stage_lines(capsys.readouterr().err)
        assert re.fullmatch(END.format(label="p", n=5), lines[-1])
        # no count: one unit per collection
        parts = [dask.delayed(int, pure=False)(i) for i in range(4)]
        assert compute(*parts, scheduler=client, progress=True, label="q") == (0, 1, 2, 3)
        assert re.fullmatch(END.format(label="q", n=4), _stage_lines(capsys.readouterr().err)[-1])


def test_a_log_gets_a_line_at_start_end_and_every_interval(monkeypatch):
    monkeypatch.setattr(prog, "LOG_INTERVAL", 0.05)
    log = io.StringIO()
    bar = prog.Stage("predicting 4 chunks", total=4, file=log)
    for _ in range(4):
        time.sleep(0.12)
        bar.update()
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[0] == "chunkseg: predicting 4 chunks: started"
    assert re.fullmatch(END.format(label="predicting 4 chunks", n=4), lines[-1])
    middle = lines[1:-1]
    assert len(middle) >= 4  # 0.48 s at one line per 0.05 s, however the threads interleave
    for line in middle:
        m = re.fullmatch(r"chunkseg: predicting 4 chunks: (\d)/4 \((\d+)%\) 0:00:00", line)
        assert m and int(m[2]) == 25 * int(m[1]), line
    assert "\r" not in log.getvalue()


def test_a_failed_stage_says_stopped_and_a_stage_without_total_its_time(capsys):
    with pytest.raises(OSError, match="unreadable"), prog.stage("loading the model"):
        raise OSError("model file unreadable")
    with prog.stage("quiet", progress=False) as bar:
        bar.update()
    lines = _stage_lines(capsys.readouterr().err)
    assert lines[0] == "chunkseg: loading the model: started"
    assert re.fullmatch(r"chunkseg: loading the model: \d+:\d\d:\d\d, stopped", lines[1])
    assert len(lines) == 2  # nothing from the disabled stage


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_tqdm_bar():
    term = _Terminal()
    bar = prog.Stage("pyramid level 1", file=term)
    bar.set_total(3)
    for _ in range(3):
        bar.update()
    bar.close()
    text = term.getvalue()
    assert "\r" in text and "started" not in text  # redrawn in place, not logged
    assert re.search(r"chunkseg: pyramid level 1: 100%\|.*\| 3/3 ", text)



def _fails(x):
    raise ValueError(f"chunk {x} failed")


def test_a_failing_task_ends_the_stage_and_raises_on_a_cluster(capsys):
    from chunkseg.scheduling import local_cluster

    chunks = [dask.delayed(_fails if i == 2 else int, pure=False)(i) for i in range(4)]
    done = dask.delayed(sum, pure=False)(chunks)
    with local_cluster(1) as client:
        with pytest.raises(ValueError, match="chunk 2 failed"):
            compute(done, scheduler=client, progress=True, label="p",
                    count=[c.key for c in chunks])
    lines = _stage_lines(capsys.readouterr().err)
    assert lines[0] == "chunkseg: p: started"
    assert re.fullmatch(r"chunkseg: p: [0-3]/4 \(\d+%\) \d+:\d\d:\d\d, stopped", lines[-1])
