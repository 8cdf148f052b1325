"""The try-it page of `fruitlens serve` in a real headless Chromium (CDP over a pipe): a real photo chosen in
the file input (and one dropped), the answer read from the page equals the API's; offline, no errors."""
from __future__ import annotations

import base64
import io

import pytest
from cdp import Browser
from conftest import real_images
from serve_support import Server, write_predictor

from fruitlens.serve.app import create_app
from fruitlens.serve.config import ServeConfig


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("page") / "out"
    write_predictor(out)
    with Server(create_app(ServeConfig(str(out), threads=1, max_body_bytes=1 << 20))) as s:
        s.wait_ready()
        yield s


@pytest.fixture
def browser(tmp_path):
    b = Browser(tmp_path / "profile")
    yield b
    b.close()


def _shown(browser) -> list[tuple[str, float]]:
    return [(x["label"], float(x["probability"])) for x in browser.eval(
        "[...document.querySelectorAll('#top li')].map(li => ({label: li.dataset.label, "
        "probability: li.dataset.probability}))")]


def _api(server, photo) -> list[tuple[str, float]]:
    status, _, answer = server.json("POST", "/v1/predict", photo.read_bytes(), {"Content-Type": "image/jpeg"})
    assert status == 200
    return [(t["label"], t["probability"]) for t in answer["top"]]


def test_page_in_headless_chromium_shows_the_photo_and_top3(server, browser):
    from PIL import Image, ImageStat

    photo = real_images(per_class=1, classes=1)[0]
    base = f"http://127.0.0.1:{server.port}"
    browser.open_page(base + "/")
    assert browser.eval("document.body.dataset.state") == "idle"
    browser.send("DOM.setFileInputFiles", {"files": [str(photo)], "nodeId": browser.node("#file")})
    assert browser.wait_for("['done', 'error'].includes(document.body.dataset.state) && document.body.dataset.state") == "done", \
        browser.eval("document.getElementById('error').textContent")
    assert _shown(browser) == _api(server, photo) and len(_shown(browser)) == 3
    assert browser.wait_for("document.getElementById('photo').naturalWidth") > 0
    assert browser.eval("document.getElementById('model').textContent").startswith("model ")
    assert browser.problems() == []
    assert all(u.startswith(base) or u.startswith("blob:") for u in browser.requests()), browser.requests()
    shot = base64.b64decode(browser.send("Page.captureScreenshot")["data"])
    with Image.open(io.BytesIO(shot)) as img:
        assert max(hi - lo for lo, hi in ImageStat.Stat(img.convert("L")).extrema) > 50  # not blank


def test_page_accepts_a_dropped_photo_and_shows_errors(server, browser):
    photo = real_images(per_class=1, classes=2)[1]
    browser.open_page(f"http://127.0.0.1:{server.port}/")
    data = base64.b64encode(photo.read_bytes()).decode()
    browser.eval(f"""(() => {{
        const bytes = Uint8Array.from(atob("{data}"), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], "{photo.name}", {{type: "image/jpeg"}}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {{dataTransfer: dt, bubbles: true}}));
    }})()""")
    assert browser.wait_for("document.body.dataset.state === 'done'")
    assert _shown(browser) == _api(server, photo)
    browser.eval("""(() => {
        const dt = new DataTransfer();
        dt.items.add(new File([new Uint8Array([1, 2, 3, 4])], "x.jpg", {type: "image/jpeg"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true}));
    })()""")
    assert browser.wait_for("document.body.dataset.state === 'error'")
    assert "not an image" in browser.eval("document.getElementById('error').textContent")
