"""The page at ``/`` and the docs at ``/docs``, in a real browser.

Debian's headless Chromium, driven by Playwright, loads the pages from a
real gunicorn that requires an API key, picks scikit-image's photos through
the file inputs and reads what the page drew: the top-5 classes, a box with
age and gender over the astronaut's face, the verdict of the verify view,
and Swagger UI's rendering of the contract. Every page must load without a
key, ask for one when the API answers 401, load nothing from another
origin and break no rule of its Content-Security-Policy. Screenshots go to
``test-artifacts/``.

Without ``/usr/bin/chromium`` the tests are skipped, except under CI
(``CI=true``), which must run them: there they fail.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from PIL import Image
from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Page,
    expect,
    sync_playwright,
)

from tests.conftest import OPENAPI_PATH, REPOSITORY, encode, photo
from tests.servers import Server, warm_gunicorn

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPOSITORY / "test-artifacts"
KEY = "browser-test-key-8d41c2e97a5b"
KEY_STORAGE = "vision-api-key"
# The first answers of a fresh worker take longest; later ones well under 1 s.
ANSWER_TIMEOUT_MS = 15_000
VIEWPORT = {"width": 1280, "height": 900}
# efficientnet-lite0's top classes for scikit-image's cat, nearly tied.
CAT_CLASSES = {"tiger cat", "tabby", "Egyptian cat"}
# Where the astronaut's face lies in scikit-image's photo (512x512), as
# (left, top, right, bottom) pixels; the drawn box must centre inside it.
ASTRONAUT_FACE = (150, 45, 300, 195)
# The photo is sent at twice its size, so that the page must scale the
# boxes down to the photo as shown.
ENLARGED = 2
DATA_TRANSFER = """([bytes, name]) => {
    const transfer = new DataTransfer();
    const file = new File([new Uint8Array(bytes)], name, {type: "image/jpeg"});
    transfer.items.add(file);
    return transfer;
}"""
# From the title, the photo's file input comes after the two view buttons
# and the docs link.
MOST_TABS = 6
ACTIVE_ELEMENT = "document.activeElement.id || document.activeElement.tagName"
HTTP_METHODS = {"get", "put", "post", "delete", "patch"}
INLINE_SCRIPT = """() => {
    const script = document.createElement("script");
    script.textContent = "document.title = 'inline'";
    document.head.append(script);
}"""


@dataclass
class Tab:
    """A page in a fresh browser context, with what it requested and the
    errors it reported."""

    page: Page
    origin: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def record_console(self, message: ConsoleMessage) -> None:
        # The API's 401 and 422 answers are expected, and Chromium logs each
        # failed fetch; anything else that is an error is not.
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)

    def foreign_requests(self) -> list[str]:
        foreign = []
        for url in self.requests:
            parts = urlsplit(url)
            if parts.scheme in {"blob", "data"}:
                continue
            if f"{parts.scheme}://{parts.netloc}" != self.origin:
                foreign.append(url)
        return foreign

    def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        self.page.screenshot(path=ARTIFACTS / f"browser-{name}.png", full_page=True)


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI must run the browser tests, but {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def server(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("browser-server")
    with warm_gunicorn(
        folder, models_dir, workers=1, VISION_API_KEYS=KEY, VISION_THREADS="2"
    ) as running:
        yield running


@pytest.fixture
def tab(chromium: Browser, server: Server) -> Iterator[Tab]:
    context = chromium.new_context(base_url=server.url, viewport=VIEWPORT)
    page = context.new_page()
    opened = Tab(page, server.url)
    page.on("request", lambda request: opened.requests.append(request.url))
    page.on("console", opened.record_console)
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    yield opened
    context.close()


@pytest.fixture
def keyed_tab(tab: Tab) -> Tab:
    """A tab that already holds the key, as after the user typed it."""
    tab.page.add_init_script(
        f"sessionStorage.setItem({json.dumps(KEY_STORAGE)}, {json.dumps(KEY)})"
    )
    return tab


def jpeg_file(
    folder: Path, name: str, mirrored: bool = False, enlarged: int = 1
) -> Path:
    image = Image.fromarray(photo(name))
    if mirrored:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if enlarged > 1:
        image = image.resize((image.width * enlarged, image.height * enlarged))
    path = folder / f"{name}-{mirrored:d}-{enlarged}.jpg"
    path.write_bytes(encode(image))
    return path


def drop_file(page: Page, selector: str, path: Path) -> None:
    """Drop ``path`` on ``selector`` as a file dragged from the desktop."""
    transfer = page.evaluate_handle(DATA_TRANSFER, [list(path.read_bytes()), path.name])
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def assert_clean(tab: Tab) -> None:
    assert tab.foreign_requests() == []
    assert tab.errors == []


def class_names(page: Page) -> list[str]:
    return page.locator("#classes .class-name").all_inner_texts()


# The page ----------------------------------------------------------------------


def test_the_page_needs_no_key_but_asks_for_one_for_its_calls(
    tab: Tab, tmp_path: Path
) -> None:
    page = tab.page
    response = page.goto("/")
    assert response is not None and response.status == 200

    page.set_input_files("#photo-input", jpeg_file(tmp_path, "chelsea"))

    expect(page.locator("#key-form")).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#error")).to_contain_text("This API needs a key")
    expect(page.locator("#key-input")).to_be_focused()
    page.fill("#key-input", KEY)
    page.keyboard.press("Enter")

    classes = page.locator("#classes li")
    expect(classes).to_have_count(5, timeout=ANSWER_TIMEOUT_MS)
    assert class_names(page)[0] in CAT_CLASSES
    expect(page.locator("#faces-summary")).to_have_text("No face found.")
    expect(page.locator("#key-form")).to_be_hidden()
    expect(page.locator("#error")).to_be_hidden()
    stored = page.evaluate(f"sessionStorage.getItem({json.dumps(KEY_STORAGE)})")
    assert stored == KEY
    assert page.evaluate("localStorage.length") == 0
    tab.screenshot("classes")
    assert_clean(tab)


def test_every_face_is_boxed_with_its_age_and_gender(
    keyed_tab: Tab, tmp_path: Path
) -> None:
    page = keyed_tab.page
    page.goto("/")

    enlarged = jpeg_file(tmp_path, "astronaut", enlarged=ENLARGED)
    page.set_input_files("#photo-input", enlarged)

    boxes = page.locator("#face-boxes .face-box")
    expect(boxes).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#classes li")).to_have_count(5)
    label = boxes.first.inner_text()
    assert re.fullmatch(r"\d{1,3}, (female|male)", label), label
    expect(page.locator("#faces li")).to_have_count(1)
    expect(page.locator("#faces li")).to_contain_text(label.split(", ")[1])

    image = page.locator("#photo").bounding_box()
    box = boxes.first.bounding_box()
    assert image is not None and box is not None
    sent_width = photo("astronaut").shape[1] * ENLARGED
    assert image["width"] < sent_width
    # Back to pixels of the original photo, where ASTRONAUT_FACE is.
    scale = sent_width / image["width"] / ENLARGED
    centre_x = (box["x"] + box["width"] / 2 - image["x"]) * scale
    centre_y = (box["y"] + box["height"] / 2 - image["y"]) * scale
    left, top, right, bottom = ASTRONAUT_FACE
    assert left < centre_x < right and top < centre_y < bottom, (centre_x, centre_y)
    assert 50 < box["width"] * scale < right - left
    keyed_tab.screenshot("faces")
    assert_clean(keyed_tab)


def test_the_verify_view_compares_two_photos(keyed_tab: Tab, tmp_path: Path) -> None:
    page = keyed_tab.page
    page.goto("/")

    page.get_by_role("button", name="Verify two faces").click()
    page.set_input_files("#verify-input-1", jpeg_file(tmp_path, "astronaut"))
    mirrored = jpeg_file(tmp_path, "astronaut", mirrored=True)
    page.set_input_files("#verify-input-2", mirrored)

    verdict = page.locator("#verdict")
    expect(verdict).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(page.locator("#verdict-text")).to_have_text("The same person.")
    expect(page.locator("#verdict-numbers")).to_contain_text(
        re.compile(r"^Distance 0\.\d{3};")
    )
    expect(page.locator("#verify-view .face-box")).to_have_count(2)
    expect(page.locator("#photo-view")).to_be_hidden()
    assert page.url.endswith("#verify")
    keyed_tab.screenshot("verify")
    assert_clean(keyed_tab)


def test_a_photo_can_be_dropped_on_the_page(keyed_tab: Tab, tmp_path: Path) -> None:
    page = keyed_tab.page
    page.goto("/")

    drop_file(page, "#photo-view .drop-zone", jpeg_file(tmp_path, "chelsea"))

    expect(page.locator("#classes li")).to_have_count(5, timeout=ANSWER_TIMEOUT_MS)
    assert class_names(page)[0] in CAT_CLASSES
    expect(page.locator("#photo-caption")).to_have_text("chelsea-0-1.jpg")
    assert_clean(keyed_tab)


def test_the_photo_can_be_chosen_from_the_keyboard(tab: Tab) -> None:
    page = tab.page
    # Playwright turns on Chromium's interception of file choosers when the
    # first listener is added, asynchronously: done before the page loads,
    # it is in place by the time a key opens one.
    page.on("filechooser", lambda chooser: None)
    page.goto("/")
    # Keyboard navigation starts from where the user last clicked.
    page.click("h1")

    focused = []
    for _ in range(MOST_TABS):
        page.keyboard.press("Tab")
        focused.append(page.evaluate(ACTIVE_ELEMENT))
        if focused[-1] == "photo-input":
            break
    assert focused[-1] == "photo-input", focused
    with page.expect_file_chooser(timeout=ANSWER_TIMEOUT_MS) as chooser:
        page.keyboard.press("Space")

    assert not chooser.value.is_multiple()
    assert_clean(tab)


def test_a_file_that_is_no_image_shows_the_problem_detail(
    keyed_tab: Tab, tmp_path: Path
) -> None:
    page = keyed_tab.page
    page.goto("/")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(encode(photo("chelsea"))[:2000])

    page.set_input_files("#photo-input", broken)

    error = page.locator("#error")
    expect(error).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(error).not_to_be_empty()
    expect(page.locator("#classes li")).to_have_count(0)
    expect(page.locator("#status")).to_have_text("")
    assert_clean(keyed_tab)


# The docs ------------------------------------------------------------------------


def test_the_docs_render_every_operation_of_the_contract(tab: Tab) -> None:
    contract = yaml.safe_load(OPENAPI_PATH.read_text())
    operations = [
        path
        for path, item in contract["paths"].items()
        for method in item
        if method in HTTP_METHODS
    ]
    page = tab.page
    response = page.goto("/docs")
    assert response is not None and response.status == 200

    paths = page.locator(".opblock-summary-path")
    expect(paths.first).to_be_visible(timeout=ANSWER_TIMEOUT_MS)
    expect(paths).to_have_count(len(operations))
    assert sorted(paths.all_inner_texts()) == sorted(operations)
    expect(page.locator(".try-out__btn")).to_have_count(0)
    tab.screenshot("docs")
    assert_clean(tab)


def test_a_script_the_policy_refuses_is_reported(tab: Tab) -> None:
    """The pages' checks above rely on Chromium reporting a refused script
    to the console; an inline one, which the policy forbids, must be."""
    page = tab.page
    page.goto("/")

    refused = "Content Security Policy"
    with page.expect_console_message(lambda message: refused in message.text):
        page.evaluate(INLINE_SCRIPT)

    assert page.title() == "Vision service"
    assert any(refused in error for error in tab.errors)
