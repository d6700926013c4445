"""Object stores: ingest, open, predict and the CLI against a real S3 API (moto's server) on loopback.

The server runs as a subprocess bound to 127.0.0.1; the credentials are fake and set through the
environment, the endpoint is passed as ``storage_options={"endpoint_url": ...}`` (the CLI, which
has no storage options, reads it from ``AWS_ENDPOINT_URL``, which botocore honours).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
import xarray as xr
from reference import conv_model

import chunkseg
from chunkseg.cli import main
from chunkseg.errors import OutputExistsError

pytest.importorskip("moto.server")  # moto[server]: the server needs flask
s3fs = pytest.importorskip("s3fs")

# Distinctive fake credentials, so that a leak is found by a plain substring search.
KEY = "chunksegfakeaccesskey"
SECRET = "chunksegfakesecretvalue"
OUTPUTS = "logits,probabilities,labels"
PARAMS = {"tile": 48, "overlap": 16, "chunks": 64}
RNG = np.random.default_rng(2024)
IMAGE = (RNG.random((150, 170)) * 255).astype(np.uint8)  # not a multiple of the stride or chunk
MODEL = conv_model(RNG.normal(size=(3, 1, 3, 3)) / 255.0, RNG.normal(size=3))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise RuntimeError(f"moto server did not answer at {url} within {timeout} s")


@pytest.fixture(scope="module")
def endpoint():
    """URL of a moto S3 server on loopback, with fake credentials in the environment."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ACCESS_KEY_ID", KEY)
            mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                         "AWS_ENDPOINT_URL_S3"):
                mp.delenv(name, raising=False)
            _wait_until_up(url, proc)
            yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def options(endpoint):
    return {"endpoint_url": endpoint}


@pytest.fixture
def bucket(options):
    """A fresh, empty bucket for one test; returns its name."""
    name = f"chunkseg-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(name)
    return name


def _local_run(tmp_path, outputs=OUTPUTS):
    return chunkseg.predict_to_zarr(IMAGE, MODEL, str(tmp_path / "local.zarr"), outputs=outputs,
                                    **PARAMS)


def _assert_same_data(got: xr.Dataset, expected: xr.Dataset) -> None:
    assert sorted(got.data_vars) == sorted(expected.data_vars)
    for name, var in expected.data_vars.items():
        assert got[name].dims == var.dims and got[name].dtype == var.dtype, name
        np.testing.assert_array_equal(got[name].values, var.values, err_msg=name)


def _ingest(bucket, options):
    url = f"s3://{bucket}/img.zarr"
    chunkseg.ingest(IMAGE, url, chunks=64, storage_options=options)
    return url


@pytest.mark.timeout(120)
def test_ingest_then_open_roundtrip(bucket, options):
    url = _ingest(bucket, options)
    image = chunkseg.open_image(url, storage_options=options)
    assert image.dims == ("y", "x", "c") and image.shape == IMAGE.shape + (1,)
    assert image.dtype == np.uint8 and image.data.chunksize == (64, 64, 1)
    np.testing.assert_array_equal(image.values[..., 0], IMAGE)
    assert image.attrs["source"] == f"{url}/0"  # level 0 of the NGFF image
    with pytest.raises(OutputExistsError, match="overwrite"):
        chunkseg.ingest(IMAGE[::-1], url, chunks=64, storage_options=options)
    chunkseg.ingest(IMAGE[::-1], url, chunks=32, storage_options=options, overwrite=True)
    again = chunkseg.open_image(url, storage_options=options)
    assert again.data.chunksize == (32, 32, 1)
    np.testing.assert_array_equal(again.values[..., 0], IMAGE[::-1])


@pytest.mark.timeout(120)
def test_predict_s3_to_s3_equals_local(bucket, options, tmp_path):
    src = _ingest(bucket, options)
    out = f"s3://{bucket}/seg.zarr"
    returned = chunkseg.predict_to_zarr(src, MODEL, out, outputs=OUTPUTS, storage_options=options,
                                        **PARAMS)
    reopened = xr.open_zarr(out, storage_options=options)
    expected = _local_run(tmp_path)
    _assert_same_data(reopened, expected)
    _assert_same_data(returned, expected)
    assert reopened.logits.shape == (3,) + IMAGE.shape and reopened.labels.dtype == np.uint8
    assert reopened.attrs["source"] == f"{src}/0"  # level 0 of the NGFF image
    local_attrs = {k: v for k, v in expected.attrs.items() if k not in ("source", "fingerprint")}
    assert {k: v for k, v in reopened.attrs.items()
            if k not in ("source", "fingerprint")} == local_attrs
    assert reopened.attrs["fingerprint"] == dict(expected.attrs["fingerprint"], source=f"{src}/0")


@pytest.mark.timeout(120)
def test_storage_options_apply_to_whichever_side_is_s3(bucket, options, tmp_path):
    expected = _local_run(tmp_path)
    out = f"s3://{bucket}/seg.zarr"
    chunkseg.predict_to_zarr(IMAGE, MODEL, out, outputs=OUTPUTS, storage_options=options,
                             **PARAMS)  # in-memory image -> S3
    _assert_same_data(xr.open_zarr(out, storage_options=options), expected)
    src = _ingest(bucket, options)
    local = str(tmp_path / "from-s3.zarr")
    chunkseg.predict_to_zarr(src, MODEL, local, outputs=OUTPUTS, storage_options=options,
                             **PARAMS)  # S3 -> local path
    _assert_same_data(xr.open_zarr(local), expected)


@pytest.mark.timeout(120)
def test_cli_ingest_and_predict_with_endpoint_from_environment(bucket, options, endpoint,
                                                               tmp_path, monkeypatch):
    from PIL import Image

    png = tmp_path / "img.png"
    Image.fromarray(IMAGE).save(png)
    src, out = f"s3://{bucket}/img.zarr", f"s3://{bucket}/cli.zarr"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the CLI has no storage options
    # s3fs caches filesystems by their arguments, not by the environment: start afresh
    s3fs.S3FileSystem.clear_instance_cache()
    argv = ["predict", src, out, "--model", "model_factories:numpy_two_class", "--tile", "48",
            "--overlap", "16", "--chunk", "64", "--outputs", OUTPUTS, "--no-progress"]
    try:
        assert main(["ingest", str(png), src, "--chunk", "64"]) == 0
        assert main(argv) == 0
        assert main(argv) == 2  # refuses to overwrite without --overwrite
        assert main(argv + ["--overwrite"]) == 0
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    np.testing.assert_array_equal(
        chunkseg.open_image(src, storage_options=options).values[..., 0], IMAGE)
    got = xr.open_zarr(out, storage_options=options)
    expected = chunkseg.predict_to_zarr(IMAGE, "model_factories:numpy_two_class",
                                        str(tmp_path / "local.zarr"), outputs=OUTPUTS, **PARAMS)
    _assert_same_data(got, expected)


@pytest.mark.timeout(120)
def test_existing_s3_output_refused_then_overwritten(bucket, options, tmp_path):
    src = _ingest(bucket, options)
    out = f"s3://{bucket}/seg.zarr"
    fs = s3fs.S3FileSystem(**options)
    chunkseg.predict_to_zarr(src, MODEL, out, outputs=OUTPUTS, storage_options=options, **PARAMS)
    before = sorted(fs.find(f"{bucket}/seg.zarr"))
    assert any(p.endswith("logits/zarr.json") for p in before)
    with pytest.raises(OutputExistsError, match="overwrite"):
        chunkseg.predict_to_zarr(src, MODEL, out, outputs="labels", storage_options=options,
                                 **PARAMS)
    fs.invalidate_cache()
    assert sorted(fs.find(f"{bucket}/seg.zarr")) == before  # untouched
    ds = chunkseg.predict_to_zarr(src, MODEL, out, outputs="labels", storage_options=options,
                                  overwrite=True, **PARAMS)
    assert list(ds.data_vars) == ["labels"]
    fs.invalidate_cache()
    left = fs.find(f"{bucket}/seg.zarr")
    assert not any("/logits/" in p or "/probabilities/" in p for p in left)  # old arrays gone
    _assert_same_data(xr.open_zarr(out, storage_options=options),
                      _local_run(tmp_path, outputs="labels"))


@pytest.mark.timeout(120)
def test_output_equal_to_s3_input_refused(bucket, options):
    src = _ingest(bucket, options)
    with pytest.raises(chunkseg.OutputOverlapError, match="overlap"):
        chunkseg.predict_to_zarr(src, MODEL, src + "/", storage_options=options, overwrite=True,
                                 **PARAMS)
    np.testing.assert_array_equal(
        chunkseg.open_image(src, storage_options=options).values[..., 0], IMAGE)


@pytest.mark.timeout(120)
def test_credentials_never_written(bucket, endpoint):
    # the credentials given explicitly, as storage options, are the ones most at risk
    options = {"key": KEY, "secret": SECRET, "endpoint_url": endpoint}
    src = _ingest(bucket, options)
    out = f"s3://{bucket}/seg.zarr"
    chunkseg.predict_to_zarr(src, MODEL, out, outputs=OUTPUTS, storage_options=options, **PARAMS)
    ds = xr.open_zarr(out, storage_options=options)
    texts = [json.dumps(ds.attrs), json.dumps(chunkseg.open_image(src, storage_options=options)
                                              .attrs)]
    texts += [json.dumps(var.attrs) for var in ds.variables.values()]
    fs = s3fs.S3FileSystem(**options)
    texts += [fs.cat_file(p).decode() for p in fs.find(bucket) if p.endswith("zarr.json")]
    assert len(texts) > 5
    port = endpoint.rpartition(":")[2]
    for text in texts:
        for secret in (KEY, SECRET, endpoint, f"127.0.0.1:{port}"):
            assert secret not in text


# --- the input's store refuses: a missing bucket, access denied (issue 19) ------------------

MODEL_SPEC = "model_factories:numpy_two_class"
CLI_PARAMS = ["--tile", "48", "--overlap", "16", "--chunk", "64", "--no-progress"]


@pytest.fixture(scope="module")
def locked_endpoint(endpoint):
    """A second moto server that checks credentials: the fake ones get 403 Forbidden."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_up(url, proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        s3fs.S3FileSystem.clear_instance_cache()


def _no_secrets(text: str) -> None:
    for secret in (KEY, SECRET):
        assert secret not in text


def _cli_refuses(argv, endpoint, monkeypatch, capsys) -> str:
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)  # the CLI has no storage options
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        code = main(argv)
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"chunkseg {argv[0]}: error:"), err
    return err[0]


@pytest.mark.timeout(120)
def test_missing_bucket_names_it(options, tmp_path):
    bucket = f"chunkseg-none-{uuid.uuid4().hex[:8]}"
    url = f"s3://{bucket}/img.zarr"
    with pytest.raises(chunkseg.NotFoundError, match=f"bucket '{bucket}' does not exist"):
        chunkseg.open_image(url, storage_options=options)
    out = tmp_path / "out.zarr"
    with pytest.raises(chunkseg.NotFoundError, match="Check the bucket name") as info:
        chunkseg.predict_to_zarr(url, MODEL_SPEC, str(out), storage_options=options, **PARAMS)
    assert url in str(info.value) and not out.exists()


@pytest.mark.timeout(120)
def test_missing_key_in_an_existing_bucket_is_not_called_a_missing_bucket(bucket, options):
    with pytest.raises(chunkseg.NotFoundError, match="no Zarr array or group was found"):
        chunkseg.open_image(f"s3://{bucket}/nothing-here.zarr", storage_options=options)


@pytest.mark.timeout(120)
def test_missing_bucket_cli(endpoint, tmp_path, monkeypatch, capsys):
    bucket = f"chunkseg-none-{uuid.uuid4().hex[:8]}"
    text = _cli_refuses(["predict", f"s3://{bucket}/img.zarr", str(tmp_path / "out.zarr"),
                         "--model", MODEL_SPEC, *CLI_PARAMS], endpoint, monkeypatch, capsys)
    assert f"bucket '{bucket}' does not exist" in text and "`image`" in text
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.timeout(120)
def test_access_refused_names_the_url_and_the_credentials(locked_endpoint, tmp_path):
    url = "s3://some-bucket/img.zarr"
    options = {"endpoint_url": locked_endpoint}
    with pytest.raises(chunkseg.InputReadError, match="refused access") as info:
        chunkseg.open_image(url, storage_options=options)
    text = str(info.value)
    assert url in text and "Check the credentials" in text and "Forbidden" in text
    _no_secrets(text)
    out = tmp_path / "out.zarr"
    with pytest.raises(chunkseg.InputReadError, match="refused access"):
        chunkseg.predict_to_zarr(url, MODEL_SPEC, str(out), storage_options=options, **PARAMS)
    assert not out.exists()


@pytest.mark.timeout(120)
def test_access_refused_cli(locked_endpoint, tmp_path, monkeypatch, capsys):
    text = _cli_refuses(["predict", "s3://some-bucket/img.zarr", str(tmp_path / "out.zarr"),
                         "--model", MODEL_SPEC, *CLI_PARAMS], locked_endpoint, monkeypatch,
                        capsys)
    assert "refused access" in text and "AWS_ACCESS_KEY_ID" in text
    _no_secrets(text)
    assert not (tmp_path / "out.zarr").exists()


def test_access_refused_message_is_redacted():
    """Access Denied (a bucket policy), for a URL carrying a user and a token: neither is
    repeated."""
    from chunkseg.io._locations import _access_refused

    err = _access_refused(PermissionError("Access Denied"),
                          "s3://someone@bucket/img.zarr?X-Amz-Security-Token=tok3n", "image")
    assert isinstance(err, chunkseg.InputReadError)
    text = str(err)
    assert "'s3://bucket/img.zarr'" in text and "Access Denied" in text
    assert "someone" not in text and "tok3n" not in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("alias", ["s3a://{b}/in.zarr", "s3://{b}//in.zarr", "s3://{b}/in.zarr/",
                                   "s3://{b}/in.zarr/seg.zarr", "s3://{b}"])
def test_an_s3_input_chunkseg_wrote_is_never_an_output_under_another_name(bucket, options,
                                                                          alias):
    """Issue 19: s3 and s3a, doubled and trailing slashes name one place; the input (an
    ingest output, so chunkseg's own) survives --overwrite byte for byte."""
    fs = s3fs.S3FileSystem(**options)
    src = f"s3://{bucket}/in.zarr"
    chunkseg.ingest(IMAGE, src, storage_options=options, chunks=64)
    before = {k: fs.cat_file(k) for k in fs.find(src)}
    out = alias.format(b=bucket)
    for writer in (
        lambda: chunkseg.predict_to_zarr(src, MODEL, out, storage_options=options,
                                         overwrite=True, **PARAMS),
        lambda: chunkseg.ingest(src, out, storage_options=options, source_storage_options=options,
                                overwrite=True),
    ):
        with pytest.raises(chunkseg.OutputOverlapError):
            writer()
    fs.invalidate_cache()
    assert {k: fs.cat_file(k) for k in fs.find(src)} == before
