"""The demo in a real browser: Playwright driving the system's chromium (Debian's package).

Playwright's own browser download is not reachable from these machines, so the test points it
at /usr/bin/chromium. `.ci/run` installs chromium with apt and sets GLM4V_EDGE_REQUIRE_BROWSER,
so there a missing browser fails instead of skipping.
"""

from __future__ import annotations

import os
import shutil

import pytest

from glm4v_edge.demo.examples import load_examples
from glm4v_edge.demo.settings import DemoSettings
from glm4v_edge.demo.ui import launch_demo
from tests.servers import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
TIMEOUT_MS = 120_000


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("GLM4V_EDGE_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("needs the system chromium: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def demo_url(rambling_server):
    port = free_port()
    demo = launch_demo(DemoSettings(remote_url=rambling_server), port=port, prevent_thread_lock=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


def test_upload_ask_think_switch_variant_and_stop(browser, demo_url, tmp_path):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(demo_url)
    expect(page.locator("#variant-status")).to_contain_text("torch-fp32 ready")

    # Upload an image, ask, and read the streamed answer with its thinking.
    example = load_examples()[0]
    page.locator("#message input[type=file]").set_input_files(str(example.files[0]))
    expect(page.locator("#message img")).to_be_visible()
    page.locator("#message textarea").fill(example.question)
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat [data-testid=bot] mark").last).to_have_text(example.answer)  # the boxed answer
    expect(page.locator("#chat")).to_contain_text("tokens/s")
    thinking = page.locator("#chat .thought-group").last
    expect(thinking).to_contain_text("Thinking")
    expect(thinking).not_to_contain_text("I see")  # collapsed once the answer started
    thinking.locator(".title").click()
    expect(thinking).to_contain_text("I see")  # the model's thinking, opened by the user
    page.screenshot(path=tmp_path / "answer.png", full_page=True)

    # Switch to the remote variant (a model that never ends its reply) and stop it mid-generation.
    page.locator("#variant input").click()
    page.get_by_role("option", name="remote").click()
    expect(page.locator("#variant-status")).to_contain_text("remote ready")
    page.locator("#max-new-tokens input[type=number]").fill("4000")
    page.locator("#max-new-tokens input[type=number]").press("Enter")
    replies_before = page.locator("#chat [data-testid=bot]").count()
    page.locator("#message textarea").fill("Talk.")
    page.locator("#message textarea").press("Enter")
    expect(page.locator("#chat [data-testid=bot]")).not_to_have_count(replies_before)  # streaming has begun
    page.locator("#stop").click()
    expect(page.locator("#chat [data-testid=bot]").last).to_contain_text("stopped")
    expect(page.locator("#chat [data-testid=bot]").last).to_contain_text("remote")
    expect(page.locator("#message textarea")).to_be_enabled()  # ready for the next question
    page.screenshot(path=tmp_path / "stopped.png", full_page=True)
    assert (tmp_path / "answer.png").stat().st_size > 0 and (tmp_path / "stopped.png").stat().st_size > 0
    page.close()
