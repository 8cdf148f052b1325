"""Secrets kept out of everything fruitlens writes or prints: the one redaction function.

Every writer of a record (manifest.json, ``_fruitlens/run.json``, the lock, the HTML report) passes its
document through :func:`redact`, and every printed line (log lines, the error line, the JVM's kept
tail) through :func:`redact_text`. A value is a secret when

- its key names one: ``secret``, ``password``/``passwd``, ``token``, ``credential``, ``access key``,
  ``private key`` in any spelling (``fs.s3a.secret.key``, ``AWS_SESSION_TOKEN``, ``db-password``);
- in text, it follows such a key as ``KEY=VALUE``, ``"KEY": "VALUE"`` or ``--KEY VALUE``;
- it looks like an AWS access key id (``AKIA…``/``ASIA…``), or is the password of a URI's ``user:pass@``;
- it is the value of an environment variable whose name names a secret (``AWS_SECRET_ACCESS_KEY``),
  wherever it appears.
"""
from __future__ import annotations

import os
import re
from typing import Any

MASK = "***"
_NAME = r"(?:secret|password|passwd|token|credential|access[._-]?key|private[._-]?key)"
SECRET_NAME = re.compile(_NAME, re.IGNORECASE)
_ASSIGNMENT = re.compile(
    rf"(?P<key>[\w.\-]*{_NAME}[\w.\-]*)(?P<sep>\"?\s*[=:]\s*\"?)(?P<value>[^\s\",}}]+)",
    re.IGNORECASE)
_FLAG = re.compile(rf"(?P<key>--[\w-]*{_NAME}[\w-]*)(?P<sep>\s+)(?P<value>[^\s-]\S*)", re.IGNORECASE)
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b")
_URI_PASSWORD = re.compile(r"(?P<head>[a-z][\w+.-]*://[^/\s:@]+:)(?P<value>[^\s@]+)(?=@)", re.IGNORECASE)
#: Shorter values are not hunted for in free text (they would mask ordinary words).
MIN_LITERAL = 8


def is_secret_key(key: str) -> bool:
    return bool(SECRET_NAME.search(str(key)))


def redact(value: Any, key: str | None = None) -> Any:
    """``value`` (a JSON-like document) with every secret replaced by ``***``; the input is not changed."""
    if key is not None and is_secret_key(key) and value not in (None, ""):
        return MASK
    if isinstance(value, dict):
        return {k: redact(v, str(k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """A line or a command line with its secrets masked (see the module docstring)."""
    for value in _environment_secrets():
        text = text.replace(value, MASK)
    text = _FLAG.sub(lambda m: f"{m['key']}{m['sep']}{MASK}", text)
    text = _ASSIGNMENT.sub(lambda m: m[0] if m["value"] == MASK else f"{m['key']}{m['sep']}{MASK}", text)
    text = _URI_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)
    return _AWS_KEY_ID.sub(MASK, text)


def _environment_secrets() -> list[str]:
    values = {v for k, v in os.environ.items() if is_secret_key(k) and len(v) >= MIN_LITERAL}
    return sorted(values, key=len, reverse=True)  # longest first: no half-masked overlaps
