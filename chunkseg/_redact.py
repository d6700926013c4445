"""One redaction for every message, warning and attribute chunkseg writes.

The lowest layer of the package (standard library only): :mod:`chunkseg.io` and
:mod:`chunkseg.outputs` both describe locations through it, so no credential of a URL
reaches an error message, the CLI's error line or an output's ``zarr.json``.

- :func:`redact_location`: a path or URL for a message (no user info, query, fragment);
- :func:`redact_text`: free text (a message, another library's warning or error text): every
  URL in it as :func:`redact_location`, credential-named ``name=value`` pairs and given
  secrets (:func:`secrets_of` ``storage_options``) masked;
- :func:`redact_attrs`: attrs copied from an input into an output;
- :func:`redacting_warnings`: the warnings raised while a run computes, re-emitted redacted
  (:func:`chunkseg.scheduling.compute` runs every writer's graph inside it).
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote_plus, urlsplit, urlunsplit

__all__ = ["is_url", "redact_attrs", "redact_location", "redact_text", "redacting_warnings",
           "secrets_of", "url_secrets"]

#: What replaces a secret.
MASK = "***"

#: Words of a mapping key (or a query parameter) whose value is a credential.
_CREDENTIAL_WORDS = frozenset({
    "key", "keys", "sig", "auth", "passwd", "pwd", "apikey", "accesskey", "secretkey",
    "privatekey", "sessionkey", "sas"})
#: Beginnings and endings of such words (``tokens``, ``authorization``, ``sastoken``...).
_CREDENTIAL_STARTS = ("token", "password", "passwd", "secret", "credential", "auth",
                      "signature", "session", "cookie")
_CREDENTIAL_ENDS = ("token", "password", "passwd", "secret", "signature", "credential",
                    "credentials", "cookie")

#: A URL inside free text: a scheme, ``://`` and everything up to a space, quote or bracket.
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}`]+")
#: ``name=value`` outside a URL, e.g. ``X-Amz-Signature=...`` or ``token=...`` in a message.
_PAIR_IN_TEXT = re.compile(r"(?<![\w-])([A-Za-z][\w.-]*)=([^\s&'\"<>()\[\]{},;`]+)")


def is_url(path: str) -> bool:
    """Whether ``path`` is an fsspec URL (``s3://...``, ``memory://...``, ``zip::s3://...``)."""
    return "://" in path or "::" in path


def redact_location(location: str) -> str:
    """``location`` without user name, password, query or fragment.

    Parameters
    ----------
    location : str
        A local path (returned as it is) or an fsspec URL, possibly chained with ``::``.

    Returns
    -------
    str
        The URL with the user information (``user:password@``), the query (``?token=...``) and
        the fragment removed from every part of the chain.
    """
    if not is_url(location):
        return location
    parts = []
    for part in location.split("::"):
        split = urlsplit(part)
        netloc = split.netloc.rpartition("@")[2]
        parts.append(urlunsplit((split.scheme, netloc, split.path, "", "")))
    return "::".join(parts)


def _key_words(key: str) -> list[str]:
    """``key`` split into lower-case words at non-alphanumerics and camelCase boundaries."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [w for w in re.split(r"[^a-z0-9]+", spaced.lower()) if w]


def is_credential_key(key: Any) -> bool:
    """Whether the value under mapping key (or query parameter) ``key`` is a credential.

    ``token``, ``password``, ``passwd``, ``secret``, ``key``, ``credential``, ``auth``,
    ``signature``, ``sig``, ``session`` and ``cookie``, case-insensitive, as the whole key or as
    one of its words (``aws_secret_access_key``, ``X-Amz-Signature``, ``sessionToken``).
    """
    return _is_credential(str(key), bare_key=True)


def _is_credential(key: str, bare_key: bool) -> bool:
    """:func:`is_credential_key`; with ``bare_key=False`` the words ``key``/``keys`` alone do
    not count (free text says ``KEY=VALUE``), their compounds (``api_key``) still do."""
    words = _key_words(key)
    joined = "".join(words)
    vocabulary = _CREDENTIAL_WORDS if bare_key else _CREDENTIAL_WORDS - {"key", "keys"}
    return any(w in vocabulary or w.startswith(_CREDENTIAL_STARTS)
               or w.endswith(_CREDENTIAL_ENDS) for w in words + [joined])


def secrets_of(options: Any) -> tuple[str, ...]:
    """Every string value of 4 or more characters in ``options``, recursively.

    Parameters
    ----------
    options : mapping, sequence, str or None
        ``storage_options`` (nested mappings and sequences are walked; keys are not secrets).

    Returns
    -------
    tuple of str
        The values to hide in messages, longest first.
    """
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            if len(value) >= 4:
                found.add(value)
        elif isinstance(value, bytes):
            walk(value.decode("utf-8", "replace"))
        elif isinstance(value, Mapping):
            for v in value.values():
                walk(v)
        elif isinstance(value, list | tuple | set | frozenset):
            for v in value:
                walk(v)

    walk(options)
    return tuple(sorted(found, key=lambda v: (-len(v), v)))


def url_secrets(text: str) -> tuple[str, ...]:
    """The credentials the URLs in ``text`` carry: user names, passwords, query values and
    fragments of 4 or more characters (raw and percent-decoded).

    Parameters
    ----------
    text : str
        A URL (``http://TOKEN@host/x.png``, ``s3://b/k?X-Amz-Signature=...``) or free text.

    Returns
    -------
    tuple of str
    """
    found: set[str] = set()
    for match in _URL_IN_TEXT.finditer(str(text)):
        _, _, rest = match.group(0).partition("://")
        end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
                  default=len(rest))
        userinfo = rest[:end].rpartition("@")[0]
        query = rest[end:].partition("?")[2] if "?" in rest[end:] else ""
        query, _, fragment = query.partition("#")
        if "#" in rest[end:] and not query:
            fragment = rest[end:].partition("#")[2]
        values = userinfo.split(":") + [fragment]
        values += [v.partition("=")[2] or v for v in re.split(r"[&;]", query)]
        found |= {v for v in values if len(v) >= 4}
        found |= {unquote_plus(v) for v in values if len(unquote_plus(v)) >= 4}
    return tuple(sorted(found, key=lambda v: (-len(v), v)))


def _redact_url_match(match: re.Match) -> str:
    url = match.group(0)
    trail = len(url) - len(url.rstrip(".,;:!"))
    core, tail = (url[:-trail], url[-trail:]) if trail else (url, "")
    scheme, _, rest = core.partition("://")
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))
    netloc, path = rest[:end].rpartition("@")[2], rest[end:]
    path = re.split(r"[?#]", path, maxsplit=1)[0]
    return f"{scheme}://{netloc}{path}{tail}"


def _redact_pair_match(match: re.Match) -> str:
    name = match.group(1)
    return f"{name}={MASK}" if _is_credential(name, bare_key=False) else match.group(0)


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` (a message, a warning, a log line) with every credential it carries removed.

    Parameters
    ----------
    text : str
        Free text, possibly holding URLs (``http://TOKEN@host/x.png``, ``s3://u:pw@b/k``,
        ``https://b.s3.amazonaws.com/k?X-Amz-Signature=...``).
    secrets : iterable of str, optional
        Strings to hide wherever they appear, e.g. :func:`secrets_of` ``storage_options``;
        strings under 4 characters are ignored.

    Returns
    -------
    str
        ``text`` with the user information (``user:password@``), query and fragment of every
        URL removed, the value of every credential-named ``name=value`` pair
        (``token=...``, ``X-Amz-Credential=...``) and every secret replaced by ``***``.
    """
    text = str(text)
    hidden = {s for s in secrets if isinstance(s, str) and len(s) >= 4}
    hidden |= set(url_secrets(text))  # also where the text repeats them outside the URL
    hidden |= {quote(s, safe="") for s in hidden} | {quote_plus(s) for s in hidden}
    for secret in sorted(hidden, key=len, reverse=True):
        text = text.replace(secret, MASK)
    text = _URL_IN_TEXT.sub(_redact_url_match, text)
    return _PAIR_IN_TEXT.sub(_redact_pair_match, text)


def redact_attrs(attrs: Mapping[str, Any], secrets: Iterable[str] = ()) -> dict[str, Any]:
    """A JSON-serialisable copy of ``attrs`` without credentials.

    Parameters
    ----------
    attrs : mapping
        Attributes, e.g. an input DataArray's or coordinate's, about to be copied into an output.
    secrets : iterable of str, optional
        As in :func:`redact_text`.

    Returns
    -------
    dict
        Keys as str; the value of every credential-named key (:func:`is_credential_key`:
        ``token``, ``aws_secret_access_key``, ``Authorization``...) replaced by ``***``; every
        string through :func:`redact_text`; nested mappings and sequences done the same way
        (sequences become lists, NumPy scalars and arrays lists or numbers through their
        ``tolist``); values JSON cannot hold are left out.
    """
    secrets = tuple(secrets)
    drop = object()

    def clean(value: Any) -> Any:
        tolist = getattr(value, "tolist", None)
        if tolist is not None and not isinstance(value, str | bytes):
            value = tolist()
        if isinstance(value, str):
            return redact_text(value, secrets)
        if value is None or isinstance(value, bool | int):
            return value
        if isinstance(value, float):
            return value
        if isinstance(value, Mapping):
            return clean_mapping(value)
        if isinstance(value, list | tuple):
            items = [clean(v) for v in value]
            return [v for v in items if v is not drop]
        return drop

    def clean_mapping(mapping: Mapping) -> dict:
        out = {}
        for key, value in mapping.items():
            if not isinstance(key, str | int | float | bool) and key is not None:
                continue
            value = MASK if is_credential_key(key) else clean(value)
            if value is not drop:
                out[redact_text(str(key), secrets)] = value
        return out

    return clean_mapping(attrs)


_MODULE_OF_FILE: dict[str, str | None] = {}


def _module_of(filename: str) -> str | None:
    """The name of the imported module whose file is ``filename`` (for the warning filters'
    module patterns), or None."""
    if filename not in _MODULE_OF_FILE:
        _MODULE_OF_FILE[filename] = next(
            (name for name, module in list(sys.modules.items())
             if getattr(module, "__file__", None) == filename), None)
    return _MODULE_OF_FILE[filename]


def _error_to_always() -> None:
    """The current warning filters with every ``error`` action turned into ``always``, so a
    warning meant to become an exception is recorded (and raised, redacted, when re-emitted)."""
    current = list(warnings.filters)
    if not any(f[0] == "error" for f in current):
        return
    warnings.resetwarnings()
    for action, message, category, module, lineno in reversed(current):
        action = "always" if action == "error" else action
        if message is None and module is None:
            warnings.simplefilter(action, category, lineno)
        else:
            warnings.filterwarnings(action, _pattern(message), category, _pattern(module),
                                    lineno)


def _pattern(value: Any) -> str:
    """A warning filter's message or module as the pattern ``filterwarnings`` takes (a compiled
    one's pattern; a plain string, as the interpreter's own filters hold, matched exactly)."""
    if value is None:
        return ""
    return value.pattern if hasattr(value, "pattern") else re.escape(value) + r"\Z"


@contextlib.contextmanager
def redacting_warnings(secrets: Iterable[str] = ()) -> Iterator[None]:
    """Re-emit every warning raised inside the block (chunkseg's and other libraries', in any
    thread of the process) with its message through :func:`redact_text`.

    The warnings are recorded while the block runs and re-emitted, in order, when it ends (also
    when it raises): same category, file and line, so the caller's filters,
    ``warnings.catch_warnings`` and ``pytest.warns`` see them as before, without credentials.
    A warning the filters turn into an exception is raised when re-emitted, redacted.

    Parameters
    ----------
    secrets : iterable of str, optional
        As in :func:`redact_text`.
    """
    secrets = tuple(secrets)
    caught: list = []
    failed = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            _error_to_always()
            yield
        failed = False
    finally:
        for record in caught:
            if failed:  # the block's own exception goes on; a warning may not replace it
                with contextlib.suppress(Warning):
                    _reemit(record, secrets)
            else:
                _reemit(record, secrets)


_REGISTRY: dict = {}


def _reemit(record: warnings.WarningMessage, secrets: tuple[str, ...]) -> None:
    """Warn ``record`` again, its message through :func:`redact_text`."""
    message = record.message
    text = redact_text(str(message), secrets)
    if isinstance(message, Warning) and text != str(message):
        try:
            message = type(message)(text)
        except TypeError:  # a warning class with another signature: keep it, redact its args
            message.args = (text,)
    # "default"/"module" filters: shown once per place, as a warning raised at the source is
    warnings.warn_explicit(message, record.category, record.filename, record.lineno,
                           module=_module_of(record.filename), registry=_REGISTRY,
                           source=record.source)
