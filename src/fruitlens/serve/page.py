"""GET /: a self-contained page (inline CSS + JS, no external URL) and its Content-Security-Policy."""
from __future__ import annotations

import base64
import hashlib
import re
from importlib import resources


def page_and_csp() -> tuple[str, str]:
    html = resources.files("fruitlens.serve").joinpath("page.html").read_text(encoding="utf-8")

    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
                        for b in blocks)

    csp = (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; img-src blob:; "
           "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return html, csp
