"""The status page works with no internet: one file, nothing fetched from anywhere else.

These checks read the page's source and need no browser; the browser tests also check, at run
time, that every request the page makes goes to llmux itself.
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from tests.e2e.conftest import running


def page_source() -> str:
    return resources.files("llmux.ui").joinpath("index.html").read_text(encoding="utf-8")


def test_no_urls_at_all() -> None:
    """Not even in comments: no http:// or https:// anywhere (nor protocol-relative //host)."""
    source = page_source()
    assert not re.findall(r"https?://", source, re.IGNORECASE)
    assert not re.findall(r"""["'(=]\s*//[\w.-]+""", source), "protocol-relative URL"


def test_nothing_loaded_from_elsewhere() -> None:
    """Scripts and styles are inline; the only link is the empty data: favicon (which keeps
    the browser from asking for /favicon.ico)."""
    source = page_source()
    assert not re.search(r"<script[^>]*\bsrc=", source, re.IGNORECASE)
    assert not re.search(r"<(img|iframe|embed|object|audio|video|source)\b", source, re.I)
    assert not re.search(r"@import|@font-face", source, re.IGNORECASE)
    links = re.findall(r"<link\b[^>]*>", source, re.IGNORECASE)
    assert links == ['<link rel="icon" href="data:,">']
    # url(...) in CSS only names fragments of the page itself (the SVG arrowheads).
    assert set(re.findall(r"url\(([^)]*)\)", source)) <= {"#arrow", "#arrow-last"}


async def test_llmux_serves_the_page(tmp_path: Path) -> None:
    async with running(tmp_path) as rig:
        for path in ("/llmux/", "/llmux"):
            response = await rig.client.get(path)
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/html")
            assert response.text == page_source()
