"""Secrets and code execution: credentials never leak, and nothing read from a store is run.

Credentials (``AWS_SECRET_ACCESS_KEY`` in the environment, ``storage_options={"key", "secret"}``,
``user:password@`` and a token as the user name inside a URL, ``?token=``, ``?sig=`` and a
presigned URL's ``X-Amz-Signature``, credential-named attrs of an input) must not appear in error
messages (nor in their cause and context chain or formatted traceback), warnings raised during a
run (chunkseg's or another library's), log records, progress output, the CLI's error line or
any output metadata. :mod:`chunkseg._redact` is the one redaction; it is unit-tested here too. And nothing an output's attrs say (``model``, ``fingerprint``) is ever
imported or executed by ``open_output``, ``output_progress``, ``chunkseg info`` or
``predict_to_zarr(..., resume=True)``; model weights load with ``torch.load(weights_only=True)``.

Every secret below is a distinctive string, so a leak is found by a plain substring search. The
S3 cases run against moto's server on 127.0.0.1 (as ``test_s3.py``); "unreachable" endpoints
are closed loopback ports, so nothing leaves the machine.
"""

from __future__ import annotations

import ast
import json
import logging
import pickle
import socket
import subprocess
import sys
import traceback
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest

import chunkseg
from chunkseg._redact import (
    redact_attrs,
    redact_location,
    redact_text,
    redacting_warnings,
    secrets_of,
    url_secrets,
)
from chunkseg.cli import main
from chunkseg.errors import IncompleteOutputWarning, InvalidValueError, NotFoundError

PACKAGE = Path(chunkseg.__file__).resolve().parent

KEY = "chunksegsecretsaccesskey"
ENV_SECRET = "envSECRETq7Zr2Xv9"  # AWS_SECRET_ACCESS_KEY
OPT_SECRET = "optSECRETk3Wd8Pn4"  # storage_options["secret"]
URL_PASSWORD = "urlPASSWORDm5Tj6Ly1"  # user:password@ in a URL
URL_TOKEN = "urlTOKENr8Vb3Hq6"  # a token as the URL's user name: http://TOKEN@host/x.png
QUERY_TOKEN = "queryTOKENa2Gx7Ks5"  # ?token=
QUERY_SIG = "querySIGn9Pc4Wd2"  # ?sig=
AMZ_CREDENTIAL = "AKIAamzCREDu3Yf5"  # a presigned URL's X-Amz-Credential
AMZ_SIGNATURE = "amzSIGNATUREe6Lm1Rt8"  # and its X-Amz-Signature
ATTR_SECRET = "attrSECRETh4Nz8Qc3"  # a credential in an input's attrs
SECRETS = (ENV_SECRET, OPT_SECRET, URL_PASSWORD, URL_TOKEN, QUERY_TOKEN, QUERY_SIG,
           AMZ_CREDENTIAL, AMZ_SIGNATURE, ATTR_SECRET)

MODEL_SPEC = "model_factories:numpy_two_class"
PARAMS = {"tile": 48, "overlap": 16, "chunks": 64}
IMAGE = (np.random.default_rng(7).random((100, 120)) * 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def _leaks(text: str) -> list[str]:
    return [s for s in SECRETS if s in text]


def _error_texts(err: BaseException) -> list[str]:
    """str and repr of the error and of every exception in its cause/context chain, and the
    formatted traceback."""
    texts, seen, todo = [], set(), [err]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        texts += [str(e), repr(e), " ".join(str(a) for a in e.args)]
        todo += [e.__cause__, e.__context__]
    texts.append("".join(traceback.format_exception(err)))
    return texts


def _assert_clean_error(excinfo) -> None:
    err = excinfo.value
    leaked = {s for text in _error_texts(err) for s in _leaks(text)}
    assert not leaked, f"{type(err).__name__} leaks {sorted(leaked)}:\n" + "\n".join(
        traceback.format_exception(err))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # nothing listens there once the socket is closed


def _dead_s3_options() -> dict:
    """Explicit credentials and an endpoint nobody listens on, retried once, quickly."""
    return {"key": KEY, "secret": OPT_SECRET, "endpoint_url": f"http://127.0.0.1:{_closed_port()}",
            "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2,
                              "read_timeout": 2}}


def _memory_url(name: str) -> str:
    return f"memory://chunkseg-secrets-{uuid.uuid4().hex[:10]}/{name}"


MEMORY_OPTIONS = {"key": KEY, "secret": OPT_SECRET}  # accepted (and ignored) by memory://


@pytest.fixture(autouse=True)
def _aws_environment(monkeypatch):
    """Fake credentials in the environment for every test: a secret to look for, and no
    request ever goes looking for real ones (instance metadata, profiles)."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    yield
    s3fs = sys.modules.get("s3fs")
    if s3fs is not None:
        s3fs.S3FileSystem.clear_instance_cache()


# --------------------------------------------------------------------------------------------------
# A moto S3 server on loopback (test_s3.py's wait helper)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endpoint():
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from test_s3 import _wait_until_up
    port = _closed_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_until_up(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def s3(endpoint):
    """A fresh bucket holding an input image; explicit-credential storage options."""
    import s3fs

    options = {"key": KEY, "secret": OPT_SECRET, "endpoint_url": endpoint}
    bucket = f"chunkseg-secrets-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    src = f"s3://{bucket}/img.zarr"
    chunkseg.ingest(IMAGE, src, chunks=64, storage_options=options)
    return {"bucket": bucket, "options": options, "src": src, "endpoint": endpoint}


def _memory_input() -> str:
    src = _memory_url("img.zarr")
    chunkseg.ingest(IMAGE, src, chunks=64, storage_options=MEMORY_OPTIONS)
    return src


@pytest.fixture(params=["memory", "s3"])
def store(request):
    """(input URL, output URL, storage options with a secret, a filesystem) on memory:// or S3."""
    import fsspec

    if request.param == "memory":
        src = _memory_input()
        return src, src.replace("img.zarr", "seg.zarr"), MEMORY_OPTIONS, fsspec.filesystem("memory")
    s3 = request.getfixturevalue("s3")
    import s3fs

    return (s3["src"], f"s3://{s3['bucket']}/seg.zarr", s3["options"],
            s3fs.S3FileSystem(**s3["options"]))


# --------------------------------------------------------------------------------------------------
# (1) Errors
# --------------------------------------------------------------------------------------------------

_URLS_WITH_PASSWORD = [
    f"s3://user:{URL_PASSWORD}@nonexistent-bucket/x.zarr",
    f"memory://user:{URL_PASSWORD}@bucket/x.zarr",
    f"memory://user:{URL_PASSWORD}@bucket/x.tif",
    f"memory://user:{URL_PASSWORD}@bucket/x.png",
    f"simplecache::s3://user:{URL_PASSWORD}@bucket/x.zarr",
]


def _http_url_with_password() -> str:
    return f"http://user:{URL_PASSWORD}@127.0.0.1:{_closed_port()}/x.zarr"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("url", _URLS_WITH_PASSWORD + ["http"],
                         ids=["s3", "memory-zarr", "memory-tif", "memory-png", "chained", "http"])
def test_url_password_not_in_input_errors(url):
    url = _http_url_with_password() if url == "http" else url
    options = _dead_s3_options() if "s3://" in url else None
    with pytest.raises(InvalidValueError, match="password") as excinfo:  # refused up front
        chunkseg.open_image(url, storage_options=options)
    _assert_clean_error(excinfo)
    with pytest.raises(InvalidValueError, match="password") as excinfo:
        chunkseg.predict(url, MODEL_SPEC, storage_options=options, **PARAMS)
    _assert_clean_error(excinfo)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("url", _URLS_WITH_PASSWORD[:2] + ["http"], ids=["s3", "memory", "http"])
def test_url_password_not_in_output_errors(url, tmp_path):
    url = _http_url_with_password() if url == "http" else url
    options = _dead_s3_options() if "s3://" in url else None
    calls = {
        "predict_to_zarr": lambda: chunkseg.predict_to_zarr(
            IMAGE, MODEL_SPEC, url, storage_options=options, **PARAMS),
        "resume": lambda: chunkseg.predict_to_zarr(
            IMAGE, MODEL_SPEC, url, storage_options=options, resume=True, **PARAMS),
        "ingest": lambda: chunkseg.ingest(IMAGE, url, storage_options=options),
        "open_output": lambda: chunkseg.open_output(url, storage_options=options),
        "output_progress": lambda: chunkseg.output_progress(url, storage_options=options),
    }
    for name, call in calls.items():
        with pytest.raises(InvalidValueError, match="password") as excinfo:  # refused up front
            call()
        try:
            _assert_clean_error(excinfo)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from None


@pytest.mark.timeout(60)
def test_unreachable_endpoint_error_holds_no_secret():
    pytest.importorskip("s3fs")
    from botocore.exceptions import EndpointConnectionError  # botocore's own, passed through

    options = _dead_s3_options()
    with pytest.raises(EndpointConnectionError) as excinfo:
        chunkseg.open_image("s3://some-bucket/x.zarr", storage_options=options)
    _assert_clean_error(excinfo)
    assert "connect" in str(excinfo.value).lower()  # it really is the unreachable endpoint
    with pytest.raises(EndpointConnectionError) as excinfo:
        chunkseg.predict_to_zarr(IMAGE, MODEL_SPEC, "s3://some-bucket/seg.zarr",
                                 storage_options=_dead_s3_options(), **PARAMS)
    _assert_clean_error(excinfo)


@pytest.mark.timeout(120)
def test_existing_output_and_resume_errors_hold_no_secret(store):
    src, out, options, _ = store
    chunkseg.predict_to_zarr(src, MODEL_SPEC, out, storage_options=options, **PARAMS)
    with pytest.raises(chunkseg.OutputExistsError) as excinfo:
        chunkseg.predict_to_zarr(src, MODEL_SPEC, out, storage_options=options, **PARAMS)
    _assert_clean_error(excinfo)
    with pytest.raises(chunkseg.OutputOverlapError) as excinfo:
        chunkseg.predict_to_zarr(src, MODEL_SPEC, src, storage_options=options, overwrite=True,
                                 **PARAMS)
    _assert_clean_error(excinfo)
    with pytest.raises(ValueError, match="differ") as excinfo:  # resume with other settings
        chunkseg.predict_to_zarr(src, MODEL_SPEC, out, storage_options=options, resume=True,
                                 **dict(PARAMS, tile=32))
    _assert_clean_error(excinfo)
    # nothing there to resume: the run starts (a retry script may always pass resume)
    started = chunkseg.predict_to_zarr(src, MODEL_SPEC, out.replace("seg.zarr", "none.zarr"),
                                       storage_options=options, resume=True, **PARAMS)
    assert started.attrs["complete"] is True


# --------------------------------------------------------------------------------------------------
# (2) logs, (3) progress output, (4) output metadata
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_debug_logs_hold_no_secret(store, caplog):
    src, out, options, _ = store
    caplog.set_level(logging.DEBUG)  # the root logger: every logger that propagates
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)]
    detached = [lg for lg in loggers if not lg.propagate]
    for lg in loggers:
        caplog.set_level(logging.DEBUG, logger=lg.name)
    for lg in detached:
        lg.addHandler(caplog.handler)
    try:
        chunkseg.predict_to_zarr(src, MODEL_SPEC, out, storage_options=options,
                                 outputs="logits,labels", **PARAMS)
        chunkseg.open_output(out, storage_options=options)
        chunkseg.output_progress(out, storage_options=options)
    finally:
        for lg in detached:
            lg.removeHandler(caplog.handler)
    if out.startswith("s3://"):
        assert any(r.name.startswith(("botocore", "s3fs", "aiobotocore")) for r in caplog.records)
    texts = [caplog.text] + [r.getMessage() for r in caplog.records]
    texts += [caplog.handler.format(r) for r in caplog.records]
    leaked = {s for text in texts for s in _leaks(text)}
    assert not leaked, f"log records leak {sorted(leaked)}"


@pytest.mark.timeout(120)
def test_progress_output_holds_no_secret(store, capfd):
    src, out, options, _ = store
    chunkseg.predict_to_zarr(src, MODEL_SPEC, out, storage_options=options, progress=True,
                             **PARAMS)
    captured = capfd.readouterr()
    assert "100%" in captured.out + captured.err  # the bar was there
    assert not _leaks(captured.out + captured.err)


@pytest.mark.timeout(120)
def test_output_metadata_holds_no_secret(store):
    src, out, options, fs = store
    chunkseg.predict_to_zarr(src, MODEL_SPEC, out, storage_options=options,
                             outputs="logits,probabilities,labels", **PARAMS)
    root = out.split("://", 1)[1]
    fs.invalidate_cache()
    metadata = [p for p in fs.find(root) if p.endswith("zarr.json")]
    assert len(metadata) >= 5  # root, 3 variables, the manifest group and array
    for path in metadata:
        text = fs.cat_file(path).decode()
        assert not _leaks(text) and KEY not in text, path
        assert "endpoint" not in text and "127.0.0.1" not in text, path
    ds = chunkseg.open_output(out, storage_options=options)
    texts = [json.dumps(ds.attrs)] + [json.dumps(v.attrs) for v in ds.variables.values()]
    assert not any(_leaks(t) or KEY in t for t in texts)


# --------------------------------------------------------------------------------------------------
# (5) the CLI's error line
# --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_cli_error_line_holds_no_secret(capsys, tmp_path):
    src = _memory_input()
    bad = [
        ["predict", f"memory://user:{URL_PASSWORD}@bucket/x.zarr", str(tmp_path / "a.zarr"),
         "--model", MODEL_SPEC, "--no-progress"],
        ["predict", src, f"memory://user:{URL_PASSWORD}@bucket/out.zarr", "--model", MODEL_SPEC,
         "--tile", "48", "--overlap", "16", "--chunk", "64", "--no-progress"],
        ["ingest", str(tmp_path / "missing.png"), f"memory://user:{URL_PASSWORD}@bucket/i.zarr"],
        ["ingest", f"memory://user:{URL_PASSWORD}@bucket/in.png", str(tmp_path / "i.zarr")],
    ]
    for argv in bad:
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert "error:" in captured.err, argv
        assert not _leaks(captured.out + captured.err), (argv, captured.err)


@pytest.mark.timeout(60)
def test_cli_info_holds_no_url_password(capsys):
    assert main(["info", f"memory://user:{URL_PASSWORD}@bucket/x.zarr"]) == 2
    captured = capsys.readouterr()
    assert not _leaks(captured.out + captured.err), captured.err


@pytest.mark.timeout(120)
def test_cli_with_environment_credentials_holds_no_secret(s3, capsys, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3["endpoint"])  # the CLI has no storage options
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    out = f"s3://{s3['bucket']}/cli.zarr"
    argv = ["predict", s3["src"], out, "--model", MODEL_SPEC, "--tile", "48", "--overlap", "16",
            "--chunk", "64"]
    assert main(argv) == 0
    assert main(argv) == 2  # exists
    assert main(argv + ["--resume", "--tile", "32"]) == 2  # settings differ
    assert main(["info", out]) == 0
    assert main(["info", f"s3://{s3['bucket']}/none.zarr"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("error:") == 3
    assert not _leaks(captured.out + captured.err) and KEY not in captured.out + captured.err


# --------------------------------------------------------------------------------------------------
# (6) nothing read from a store is imported or executed
# --------------------------------------------------------------------------------------------------


def _evil_module(tmp_path, monkeypatch) -> tuple[str, Path]:
    """An importable module (tmp_path on sys.path) that writes a marker file when imported."""
    name = f"chunkseg_evil_{uuid.uuid4().hex[:10]}"
    marker = tmp_path / f"{name}.imported"
    (tmp_path / f"{name}.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n"
        "def factory(**kwargs):\n    Path(" + repr(str(marker)) + ").write_text('called')\n"
        "    return lambda batch: batch\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return name, marker


@pytest.mark.timeout(60)
def test_attrs_are_never_imported(tmp_path, monkeypatch, capsys):
    evil, marker = _evil_module(tmp_path, monkeypatch)
    src, out = tmp_path / "in.zarr", tmp_path / "seg.zarr"
    chunkseg.ingest(IMAGE, str(src), chunks=64)
    chunkseg.predict_to_zarr(str(src), MODEL_SPEC, str(out), **PARAMS)
    # what an attacker who can write the store writes: a model spec naming their module,
    # in the attrs, the fingerprint and the consolidated metadata alike; and an unfinished run
    changed = 0
    for path in out.rglob("zarr.json"):
        text = path.read_text()
        if MODEL_SPEC in text:
            text = text.replace(MODEL_SPEC, f"{evil}:factory").replace(
                '"complete": true', '"complete": false')
            path.write_text(text)
            changed += 1
    assert changed >= 1

    with pytest.warns(IncompleteOutputWarning):
        ds = chunkseg.open_output(str(out))
    assert f"{evil}:factory" in json.dumps(ds.attrs["fingerprint"])  # the attack is in place
    assert ds.labels.values.shape == IMAGE.shape  # reading the data runs nothing either
    assert chunkseg.output_progress(str(out)) == (4, 4)
    assert main(["info", str(out)]) == 0
    with pytest.raises(ValueError, match="model"):  # resume compares, never loads
        chunkseg.predict_to_zarr(str(src), MODEL_SPEC, str(out), resume=True, **PARAMS)
    assert main(["predict", str(src), str(out), "--model", MODEL_SPEC, "--tile", "48",
                 "--overlap", "16", "--chunk", "64", "--no-progress", "--resume"]) == 2
    assert "model" in capsys.readouterr().err
    assert evil not in sys.modules and not marker.exists()

    # the test can fail: the module is importable and leaves its marker when imported
    __import__(evil)
    assert marker.read_text() == "imported"
    monkeypatch.delitem(sys.modules, evil)


@pytest.mark.timeout(60)
def test_pretrained_weights_load_weights_only(tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from chunkseg.models import unet

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (exec, (f"open({str(marker)!r}, 'w').write('x')",))

    weights = tmp_path / "evil.pt"
    torch.save({"w": Payload()}, weights)
    monkeypatch.setattr(unet, "WEIGHTS_PATH", weights)
    with pytest.raises(pickle.UnpicklingError, match="(?i)weights_only|unpickl|global"):
        unet.pretrained()
    assert not marker.exists()
    torch.load(weights, weights_only=False)  # the test can fail: this file runs code
    assert marker.exists()


# Calls that turn data into code: none of them may take a string read from a store.
_FORBIDDEN_NAMES = {"eval", "exec", "compile", "__import__"}
_FORBIDDEN_ATTRS = {("pickle", "load"), ("pickle", "loads"), ("cloudpickle", "load"),
                    ("cloudpickle", "loads"), ("dill", "load"), ("dill", "loads"),
                    ("marshal", "loads"), ("yaml", "load"), ("yaml", "unsafe_load"),
                    ("ast", "literal_eval"), ("runpy", "run_path"), ("runpy", "run_module")}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def test_no_other_code_loading_in_the_package():
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        scopes = {}
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                for sub in ast.walk(fn):
                    scopes.setdefault(id(sub), fn.name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                calls.append((path.relative_to(PACKAGE).as_posix(), scopes.get(id(node)),
                              _dotted(node.func), node))
    assert len(calls) > 500  # the scan saw the package
    found = {}
    for rel, scope, name, node in calls:
        where = f"{rel}:{node.lineno} in {scope}"
        parts = tuple(name.split("."))
        assert name not in _FORBIDDEN_NAMES, where
        assert parts[-2:] not in _FORBIDDEN_ATTRS, where
        kwargs = {k.arg: k.value for k in node.keywords}
        if parts[-2:] == ("torch", "load"):
            value = kwargs.get("weights_only")
            assert isinstance(value, ast.Constant) and value.value is True, where
            found.setdefault("torch.load", []).append(where)
        if parts[-1] == "load" and parts[0] in ("np", "numpy"):
            value = kwargs.get("allow_pickle")
            assert value is None or (isinstance(value, ast.Constant) and value.value is False), where
        if parts[-1] == "import_module" or name == "importlib.__import__":
            # only the user's own `model="package.module:factory"` spec is imported
            found.setdefault("import_module", []).append((rel, scope))
        if parts[-2:] == ("jit", "load"):
            found.setdefault("jit.load", []).append((rel, scope))
    # the shipped weights, and a training run's own checkpoint and best weights (all
    # weights_only=True, checked above)
    assert sorted({w.split(":")[0] for w in found.get("torch.load", [])}) == [
        "models/unet.py", "training/_run.py", "training/train.py"]
    assert found.get("import_module") == [("models/load.py", "_load_factory")]
    assert {r for r, _ in found.get("jit.load", [])} <= {"models/load.py"}


# --------------------------------------------------------------------------------------------------
# (7) Tokens as URL user names, query tokens, presigned URLs, input attrs, warnings in a run
# --------------------------------------------------------------------------------------------------


def _presigned_url(port: int, name: str = "img.tif") -> str:
    """An S3 presigned URL (as ``generate_presigned_url`` writes it) to a closed local port."""
    return (f"https://127.0.0.1:{port}/bucket/{name}?X-Amz-Algorithm=AWS4-HMAC-SHA256"
            f"&X-Amz-Credential={AMZ_CREDENTIAL}%2F20260101%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20260101T000000Z&X-Amz-Expires=3600&X-Amz-SignedHeaders=host"
            f"&X-Amz-Signature={AMZ_SIGNATURE}")


def _token_urls() -> dict[str, str]:
    """Inputs carrying a token that is not refused up front (no password): nothing is there."""
    return {
        "http-user": f"http://{URL_TOKEN}@127.0.0.1:{_closed_port()}/x.png",
        "memory-user": f"memory://{URL_TOKEN}@bucket-{uuid.uuid4().hex[:8]}/x.png",
        "memory-zarr-user": f"memory://{URL_TOKEN}@bucket-{uuid.uuid4().hex[:8]}/x.zarr",
        "http-token": f"http://127.0.0.1:{_closed_port()}/x.png?token={QUERY_TOKEN}",
        "http-sig": f"http://127.0.0.1:{_closed_port()}/x.tif?sv=2022&sig={QUERY_SIG}",
        "memory-token": f"memory://bucket-{uuid.uuid4().hex[:8]}/x.zarr?token={QUERY_TOKEN}",
        "presigned": _presigned_url(_closed_port()),
    }


@pytest.mark.timeout(120)
@pytest.mark.parametrize("kind", list(_token_urls()))
def test_url_tokens_not_in_input_errors(kind):
    url = _token_urls()[kind]
    assert any(s in url for s in SECRETS)  # the test can fail: the secret is in what is passed
    with pytest.raises(NotFoundError) as excinfo:
        chunkseg.open_image(url)
    _assert_clean_error(excinfo)
    assert redact_location(url) in str(excinfo.value)  # the location is still named
    with pytest.raises(NotFoundError) as excinfo:
        chunkseg.predict(url, MODEL_SPEC, **PARAMS)
    _assert_clean_error(excinfo)
    with pytest.raises(NotFoundError) as excinfo:
        chunkseg.ingest(url, _memory_url("copy.zarr"))
    _assert_clean_error(excinfo)


@pytest.mark.timeout(120)
def test_cli_error_line_holds_no_url_token(capsys, tmp_path):
    urls = _token_urls()
    for kind in ("http-user", "memory-user", "http-token", "presigned"):
        argv = ["predict", urls[kind], str(tmp_path / f"{kind}.zarr"), "--model", MODEL_SPEC,
                "--no-progress"]
        assert main(argv) == 2, argv
        captured = capsys.readouterr()
        assert "error:" in captured.err and "not be found" in captured.err, captured.err
        assert not _leaks(captured.out + captured.err), (kind, captured.err)
        assert main(["ingest", urls[kind], str(tmp_path / f"{kind}-in.zarr")]) == 2
        assert main(["info", urls[kind]]) == 2
        captured = capsys.readouterr()
        assert captured.err.count("error:") == 2
        assert not _leaks(captured.out + captured.err), (kind, captured.err)


@pytest.mark.timeout(120)
def test_cli_info_holds_no_url_token(capsys):
    # outputs at URLs that carry a token (user name, query; memory:// takes both as part of the
    # path): info reads them, and neither its report nor anything else repeats the token
    for url in (f"memory://{URL_TOKEN}@bucket-{uuid.uuid4().hex[:8]}/seg.zarr",
                f"{_memory_url('seg.zarr')}?token={QUERY_TOKEN}"):
        chunkseg.predict_to_zarr(IMAGE, MODEL_SPEC, url, **PARAMS)
        assert main(["info", url]) == 0, url
        captured = capsys.readouterr()
        assert "store" in captured.out and "4 of 4" in captured.out
        assert redact_location(url) in captured.out
        assert not _leaks(captured.out + captured.err), captured.out


class LibraryWarning(UserWarning):
    """Stands for another library's warning category (zarr's, fsspec's...)."""


def _leaky_warning_text() -> str:
    return (f"retrying GET http://{URL_TOKEN}@example.invalid/w.zarr/c/0/0?token={QUERY_TOKEN}"
            f"&sig={QUERY_SIG}, then {_presigned_url(9)} with secret={ATTR_SECRET}; "
            f"options {OPT_SECRET}")


def _warning_model():
    """``numpy_two_class`` that, in every chunk task, warns as a storage library would: a URL
    with its credentials and a storage option's value in the text."""
    from model_factories import numpy_two_class

    inner = numpy_two_class()

    def model(batch):
        warnings.warn(_leaky_warning_text(), LibraryWarning, stacklevel=1)
        return inner(batch)

    return model


@pytest.mark.timeout(120)
def test_library_warning_during_a_run_is_redacted():
    model = _warning_model()
    with pytest.warns(LibraryWarning) as raw:  # the test can fail: the model leaks when called
        model(np.zeros((1, 1, 4, 4), np.float32))
    assert URL_TOKEN in str(raw[0].message) and OPT_SECRET in str(raw[0].message)

    out = _memory_url("seg.zarr")
    with pytest.warns(LibraryWarning, match="retrying GET") as record:  # category kept
        chunkseg.predict_to_zarr(IMAGE, model, out, storage_options=MEMORY_OPTIONS, **PARAMS)
    texts = [str(w.message) for w in record]
    assert texts and all(not _leaks(t) for t in texts), texts
    assert all(w.category is LibraryWarning for w in record if "retrying" in str(w.message))
    # what is left says what happened: the URLs without their credentials and query
    assert "http://example.invalid/w.zarr/c/0/0" in texts[0]
    assert "https://127.0.0.1:9/bucket/img.tif" in texts[0]
    assert "secret=***" in texts[0] and "options ***" in texts[0]

    # the lazy path computed by the caller is not a chunkseg run; the writers are (also ingest)
    src = _memory_url("warned.zarr")
    import dask.array as da

    def warn_block(block):
        warnings.warn(_leaky_warning_text(), LibraryWarning, stacklevel=1)
        return block

    data = da.from_array(IMAGE, chunks=50).map_blocks(warn_block, dtype=IMAGE.dtype,
                                                      meta=np.empty((0, 0), IMAGE.dtype))
    with pytest.warns(LibraryWarning) as record:
        chunkseg.ingest(data, src, chunks=64, storage_options=MEMORY_OPTIONS)
    assert record and not any(_leaks(str(w.message)) for w in record)


@pytest.mark.timeout(120)
def test_warning_filters_still_apply_during_a_run():
    model = _warning_model()
    out = _memory_url("seg.zarr")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        warnings.filterwarnings("ignore", category=LibraryWarning)
        chunkseg.predict_to_zarr(IMAGE, model, out, **PARAMS)
    assert not [w for w in record if w.category is LibraryWarning]  # "ignore" still ignores
    with warnings.catch_warnings():
        warnings.simplefilter("error", LibraryWarning)  # "error" still raises, redacted
        with pytest.raises(LibraryWarning, match="retrying GET") as excinfo:
            chunkseg.predict_to_zarr(IMAGE, model, _memory_url("seg2.zarr"),
                                     storage_options=MEMORY_OPTIONS, **PARAMS)
    _assert_clean_error(excinfo)


@pytest.mark.timeout(120)
def test_input_attrs_credentials_not_in_output(tmp_path):
    xr = pytest.importorskip("xarray")
    h, w = IMAGE.shape
    coord_attrs = {"units": "nm", "token": ATTR_SECRET, "aws_secret_access_key": ATTR_SECRET,
                   "href": f"https://host.invalid/tiles?sig={QUERY_SIG}",
                   "provenance": {"Authorization": f"Bearer {ATTR_SECRET}",
                                  "urls": [f"s3://{URL_TOKEN}@bucket/raw.zarr"]}}
    image = xr.DataArray(
        IMAGE, dims=("y", "x"),
        coords={"y": ("y", np.arange(h) * 4.0, coord_attrs),
                "x": ("x", np.arange(w) * 4.0, dict(coord_attrs, units="nm")),
                "spatial_ref": ((), 0, {"crs_wkt": "LOCAL_CS[\"pixels\"]",
                                        "sessionToken": ATTR_SECRET,
                                        "note": f"from {_presigned_url(9)}"})},
        attrs={"source": f"http://{URL_TOKEN}@host.invalid/raw.zarr?token={QUERY_TOKEN}",
               "password": ATTR_SECRET})
    out = tmp_path / "seg.zarr"
    ds = chunkseg.predict_to_zarr(image, MODEL_SPEC, str(out), outputs="logits,labels", **PARAMS)
    metadata = sorted(out.rglob("zarr.json"))
    assert len(metadata) >= 6  # root, 2 variables, y, x, spatial_ref, class, manifest
    for path in metadata:
        text = path.read_text()
        assert not _leaks(text), (path, [s for s in SECRETS if s in text])
    # the harmless attrs came through, the credential-named ones masked
    assert ds.y.attrs["units"] == "nm" and ds.y.attrs["token"] == "***"
    assert ds.y.attrs["aws_secret_access_key"] == "***"
    assert ds.y.attrs["href"] == "https://host.invalid/tiles"
    assert ds.y.attrs["provenance"] == {"Authorization": "***", "urls": ["s3://bucket/raw.zarr"]}
    assert ds.spatial_ref.attrs["crs_wkt"] == "LOCAL_CS[\"pixels\"]"
    assert ds.attrs["source"] == "http://host.invalid/raw.zarr"
    # the lazy result of predict carries the same attrs
    lazy = chunkseg.predict(image, MODEL_SPEC, **PARAMS)
    texts = [json.dumps(lazy.attrs)] + [json.dumps(c.attrs) for c in lazy.coords.values()]
    assert not any(_leaks(t) for t in texts), texts
    # and the instances writer records the same source
    seg = chunkseg.open_image(image)
    assert not _leaks(json.dumps(seg.attrs["source"]))


# --- the redaction itself ---------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    (f"GET http://{URL_TOKEN}@host/x.png failed.", "GET http://host/x.png failed."),
    (f"open 's3://user:{URL_PASSWORD}@b/k' now", "open 's3://b/k' now"),
    (f"x memory://b/x.zarr?token={QUERY_TOKEN}#frag", "x memory://b/x.zarr"),
    (f"simplecache::s3://u:{URL_PASSWORD}@b/k?sig={QUERY_SIG}", "simplecache::s3://b/k"),
    (f"URL('https://u@h:8443/p?sig={QUERY_SIG}') refused", "URL('https://h:8443/p') refused"),
    (_presigned_url(9) + " expired", "https://127.0.0.1:9/bucket/img.tif expired"),
    (f"headers X-Amz-Signature={AMZ_SIGNATURE} token={QUERY_TOKEN}, tile=48",
     "headers X-Amz-Signature=*** token=***, tile=48"),
    # the URL's credentials are hidden where the text repeats them outside it, too
    (f"http://{URL_TOKEN}@h/x: /{URL_TOKEN}@h/x not found", "http://h/x: /***@h/x not found"),
    ("`tile` must be a positive int. Got 0.", "`tile` must be a positive int. Got 0."),
    # chunkseg's own wording is left alone: a placeholder KEY, a list of URL schemes
    ("must be KEY=VALUE (e.g. ema=0.999)", "must be KEY=VALUE (e.g. ema=0.999)"),
    ("an fsspec URL (s3://, gs://, memory://, ...) or 'tcp://127.0.0.1:8786'",
     "an fsspec URL (s3://, gs://, memory://, ...) or 'tcp://127.0.0.1:8786'"),
    (f"api_key={QUERY_TOKEN} aws_secret_access_key={OPT_SECRET}",
     "api_key=*** aws_secret_access_key=***"),
    ("/data/a.zarr and C:\\x.tif", "/data/a.zarr and C:\\x.tif"),
])
def test_redact_text(text, expected):
    assert redact_text(text) == expected


def test_redact_text_hides_given_secrets():
    options = {"key": KEY, "secret": OPT_SECRET + "/+=",
               "client_kwargs": {"headers": {"Authorization": f"Bearer {ATTR_SECRET}"}},
               "config_kwargs": {"retries": {"max_attempts": 1}}, "region": "eu"}
    secrets = secrets_of(options)
    assert set(secrets) == {KEY, OPT_SECRET + "/+=", f"Bearer {ATTR_SECRET}"}  # not "eu", not 1
    text = (f"signing with {KEY} and {OPT_SECRET}/+= (url-quoted {OPT_SECRET}%2F%2B%3D) "
            f"as Bearer {ATTR_SECRET} in eu")
    assert redact_text(text, secrets) == "signing with *** and *** (url-quoted ***) as *** in eu"
    assert redact_text(text) == text  # no secrets given, no URL: unchanged
    assert redact_text("a key abc", ["abc"]) == "a key abc"  # under 4 characters: not hidden
    assert set(url_secrets(f"http://u:{URL_PASSWORD}@h/x?a=1&token={QUERY_TOKEN}")) == {
        URL_PASSWORD, QUERY_TOKEN}


def test_redact_attrs():
    np_value = np.float32(2.5)
    attrs = {"units": "nm", "scale": np_value, "shape": np.array([2, 3]), "n": 3, "ok": True,
             "none": None, "Token": ATTR_SECRET, "aws_secret_access_key": ATTR_SECRET,
             "X-Amz-Signature": AMZ_SIGNATURE, "sessionToken": ATTR_SECRET,
             "api_key": ATTR_SECRET, "Cookie": ATTR_SECRET, "passwd": ATTR_SECRET,
             "credentials": {"nested": ATTR_SECRET},
             "href": f"http://{URL_TOKEN}@h/x?sig={QUERY_SIG}",
             "list": [{"password": ATTR_SECRET}, f"s3://b/k?token={QUERY_TOKEN}", (1, 2)],
             "note": f"made with {OPT_SECRET}", "object": object(),
             "keywords": "cells", "long_name": "distance", "monkey": "banana"}
    out = redact_attrs(attrs, secrets=[OPT_SECRET])
    json.dumps(out)  # JSON-serialisable
    assert not any(s in json.dumps(out) for s in SECRETS)
    for key in ("Token", "aws_secret_access_key", "X-Amz-Signature", "sessionToken", "api_key",
                "Cookie", "passwd", "credentials"):
        assert out[key] == "***", key
    assert out["href"] == "http://h/x"
    assert out["list"] == [{"password": "***"}, "s3://b/k", [1, 2]]
    assert out["note"] == "made with ***"
    assert "object" not in out  # not JSON: left out
    assert out["scale"] == 2.5 and out["shape"] == [2, 3] and out["n"] == 3
    assert out["ok"] is True and out["none"] is None
    for key in ("units", "keywords", "long_name", "monkey"):  # not credentials: kept as they are
        assert out[key] == attrs[key], key
    assert attrs["Token"] == ATTR_SECRET  # a copy: the input is left alone


def test_redacting_warnings_keeps_category_place_and_filters():
    import threading

    def warn(text, category=LibraryWarning):
        warnings.warn(text, category, stacklevel=1)

    with pytest.warns((LibraryWarning, DeprecationWarning)) as record:
        with redacting_warnings([OPT_SECRET]):
            thread = threading.Thread(target=warn, args=(f"in a thread, {OPT_SECRET}",))
            thread.start()
            thread.join()
            warn(f"here http://{URL_TOKEN}@h/x")
            warn("harmless", DeprecationWarning)
    by_text = {str(w.message): w for w in record}
    assert set(by_text) >= {"in a thread, ***", "here http://h/x", "harmless"}
    assert by_text["here http://h/x"].category is LibraryWarning
    assert by_text["harmless"].category is DeprecationWarning
    assert by_text["here http://h/x"].filename == __file__  # still points at where it was raised
    # the block's own exception is not replaced by a warning the filters turn into one
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(KeyError):
            with redacting_warnings():
                warn(f"http://{URL_TOKEN}@h/x")
                raise KeyError("the block's own")
        with pytest.raises(LibraryWarning) as excinfo:
            with redacting_warnings():
                warn(f"http://{URL_TOKEN}@h/x")
        assert str(excinfo.value) == "http://h/x"


@pytest.mark.parametrize("scheduler", ["threads", "sync"])
def test_compute_redacts_the_warnings_of_its_tasks(scheduler):
    """``scheduling.compute``, which every writer's run goes through (instances, regions,
    predict_instances, evaluate, the pyramid), re-emits its tasks' warnings redacted."""
    import dask

    from chunkseg.scheduling import compute

    @dask.delayed(pure=False)
    def task(i):
        warnings.warn(f"{i}: {_leaky_warning_text()}", LibraryWarning, stacklevel=1)
        return i

    with pytest.warns(LibraryWarning) as record:
        assert compute(*[task(i) for i in range(4)], scheduler=scheduler,
                       secrets=secrets_of(MEMORY_OPTIONS)) == (0, 1, 2, 3)
    texts = sorted(str(w.message) for w in record)
    assert len(texts) == 4 and texts[0].startswith("0: retrying GET http://example.invalid/")
    assert not any(_leaks(t) for t in texts), texts


@pytest.mark.parametrize("action", ["once", "default", "module"])
def test_redacting_warnings_shows_a_warning_once_as_the_filter_says(action):
    def warn(text):
        warnings.warn(text, LibraryWarning, stacklevel=1)

    text = f"clean {uuid.uuid4().hex}"  # nothing to redact: the same text as at the source
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter(action)
        with redacting_warnings():
            for _ in range(3):
                warn(text)
                warn(f"http://{URL_TOKEN}@h/{text}")
    texts = [str(w.message) for w in record]
    assert sorted(texts) == sorted([text, f"http://h/{text}"]), texts
