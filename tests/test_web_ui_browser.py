"""The web UI end to end in a real browser: Debian's headless Chromium driven by Playwright, tiny
models, and the scripted OpenAI-compatible brain over real HTTP.

CI installs Chromium (.ci/run) and sets ARPO_REQUIRE_BROWSER=1, so there a missing browser fails the
test instead of skipping it.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from fixtures_brain import brain_server  # noqa: F401  (fixture)

from arpo import SAMPLE_IMAGE

CHROMIUM = Path("/usr/bin/chromium")
# The flags a closed network needs: no sandbox as root, and no background calls to Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]
WAIT_MS = 120_000


def _browser_or_skip():
    required = os.environ.get("ARPO_REQUIRE_BROWSER") == "1"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            raise
        pytest.skip("playwright is not installed")
    if not CHROMIUM.exists():
        if required:
            pytest.fail(f"{CHROMIUM} is missing; install Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def ui_url(brain_server):  # noqa: F811
    from arpo.app.web_ui import UiDefaults, build_ui
    from arpo.storage.history import History

    defaults = UiDefaults.of(
        models="tiny", brain="vllm", base_url=brain_server.base_url, vlm="scripted-vlm", llm="scripted-llm"
    )
    history = History.open(None)
    app = build_ui(history, defaults).queue()
    _, url, _ = app.launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True, footer_links=[]
    )
    try:
        yield url, history, brain_server
    finally:
        app.close()
        history.close()


def test_a_session_in_the_browser_takes_feedback_and_an_edit_and_keeps_them(ui_url):
    sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect

    url, history, server = ui_url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.goto(url)
            status = page.locator("#status")

            page.locator("#reference input[type=file]").set_input_files(str(SAMPLE_IMAGE))
            page.locator("#start").click()
            expect(status).to_contain_text("iteration 0", timeout=WAIT_MS)
            expect(page.locator("#generated img")).to_be_visible()
            run_id = status.locator("code").first.inner_text()

            page.locator("#feedback input").fill("it is a watercolour")
            page.locator("#send-feedback").click()
            expect(status).to_contain_text("Understood as feedback: “it is a watercolour”", timeout=WAIT_MS)
            expect(status).to_contain_text("waiting for your reply", timeout=WAIT_MS)
            # The round either kept phrases (iteration 1, new phrases marked) or kept none (still 0,
            # with the round's phrases in the table and a notice saying so).
            after_feedback = int(status.inner_text().split("· iteration ")[1].split()[0])
            expect(page.locator("#candidates")).to_contain_text("no" if after_feedback == 0 else "yes")
            if after_feedback:
                expect(page.locator("#prompt-view mark").first).to_be_visible()

            page.locator("#edit-prompt textarea").fill("a watercolour cat on a red sofa")
            page.locator("#use-prompt").click()
            expect(status).to_contain_text(f"iteration {after_feedback + 1}", timeout=WAIT_MS)
            expect(page.locator("#candidates-note")).to_contain_text("your edited prompt")
            expect(page.locator("#prompt-view")).to_contain_text("a watercolour cat on a red sofa")

            page.get_by_role("tab", name="Edit and render").click()
            page.locator("#content textarea").fill("a cat on a red sofa")
            page.locator("#replace-old textarea").fill("cat")
            page.locator("#replace-new textarea").fill("dog")
            page.locator("#render").click()
            expect(page.locator("#render-status")).to_contain_text("Rendered with seed 0", timeout=WAIT_MS)
        finally:
            browser.close()

    turns = history.session_turns(run_id)
    assert [(t.action, t.text) for t in turns] == [
        ("feedback", "it is a watercolour"),
        ("edit", "a watercolour cat on a red sofa"),
    ]
    assert turns[0].shown["iteration"] == 0 and turns[1].shown["iteration"] == after_feedback
    iterations = history.iterations(run_id)
    assert [r.index for r in iterations] == list(range(after_feedback + 2))
    assert iterations[-1].prompt == "a watercolour cat on a red sofa"
    assert history.get_run(run_id).status == "paused"

    proposals = [json.dumps(r.body) for r in server.requests if r.kind == "phrases"]
    assert len(proposals) == 1 and "it is a watercolour" in proposals[0], "feedback must reach the proposer"

    renders = history.renders(run_id)
    assert len(renders) == 1
    assert renders[0].content == "a dog on a red sofa" and renders[0].prompt.startswith("a dog on a red sofa")
    assert renders[0].seed == 0 and history.has_image(renders[0].image_sha256)


@pytest.fixture
def offline_ui_url(tmp_path):
    from arpo.app.web_ui import UiDefaults, build_ui
    from arpo.storage.history import History

    history = History.open(f"sqlite:///{tmp_path}/arpo.db")
    app = build_ui(history, UiDefaults.of(models="tiny", brain="offline")).queue()
    _, url, _ = app.launch(
        server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True, footer_links=[]
    )
    try:
        yield url, history
    finally:
        app.close()
        history.close()


def _no_error_badges(page) -> None:
    # Gradio marks a handler that raised with an "Error" badge on its outputs and a toast.
    assert page.get_by_text("Error", exact=True).count() == 0, "a handler raised instead of answering in the page"


def test_the_crash_paths_answer_in_the_page_and_typed_commands_work(offline_ui_url, tmp_path):
    """Regressions: an unknown session id, Iterations 0 and -3, and Continue after Stop each used to
    put red Error badges on the page; typed `run 1`, `pin`, Enter and the Unpin button work."""
    sync_playwright = _browser_or_skip()
    from playwright.sync_api import expect

    url, history = offline_ui_url
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(url)
            status = page.locator("#status")

            page.locator("#resume-id textarea").fill("ffffffffffff")
            page.locator("#resume").click()
            expect(status).to_contain_text("no run with id ffffffffffff", timeout=WAIT_MS)
            _no_error_badges(page)

            page.locator("#reference input[type=file]").set_input_files(str(SAMPLE_IMAGE))
            page.locator("#start").click()
            expect(status).to_contain_text("iteration 0", timeout=WAIT_MS)
            run_id = status.locator("code").first.inner_text()

            for bad in ("0", "-3"):
                page.locator("#iterations input").fill(bad)
                page.locator("#run-several").click()
                expect(status).to_contain_text(f"from 1 to 100, not {bad}", timeout=WAIT_MS)
                _no_error_badges(page)

            reply = page.locator("#feedback input")
            reply.fill("pin red sofa")
            reply.press("Enter")  # Enter sends
            expect(status).to_contain_text("Understood: pin red sofa.", timeout=WAIT_MS)
            expect(status).to_contain_text("waiting for your reply", timeout=WAIT_MS)
            expect(status).to_contain_text("pinned: red sofa")
            page.locator("#phrases textarea").fill("red sofa")
            page.locator("#unpin").click()
            expect(status).to_contain_text("Understood: unpin red sofa.", timeout=WAIT_MS)
            expect(status).to_contain_text("waiting for your reply", timeout=WAIT_MS)

            reply.fill("run 1")
            reply.press("Enter")
            expect(status).to_contain_text("Understood: one more iteration.", timeout=WAIT_MS)
            expect(status).to_contain_text("waiting for your reply", timeout=WAIT_MS)
            expect(page.locator("#candidates")).to_contain_text("prompt so far + phrase")
            expect(page.locator("#best-prompt textarea")).not_to_have_value("")
            page.screenshot(path=str(tmp_path / "session.png"), full_page=True)

            page.locator("#round input").click()  # browse back to the starting round
            page.get_by_role("option", name="0", exact=True).click()
            expect(status).to_contain_text("Showing iteration 0", timeout=WAIT_MS)
            expect(page.locator("#candidates-note")).to_contain_text("starting prompt")

            page.locator("#stop").click()
            expect(status).to_contain_text("finished", timeout=WAIT_MS)
            page.locator("#continue").click()
            expect(status).to_contain_text("takes no more replies", timeout=WAIT_MS)
            _no_error_badges(page)

            page.get_by_role("tab", name="History").click()
            page.locator("#refresh").click()
            expect(page.locator("#runs")).to_contain_text(run_id, timeout=WAIT_MS)
            page.locator("#runs").get_by_test_id("cell-0-0").click()  # a row click opens the run
            expect(page.locator("#opened-id textarea")).to_have_value(run_id, timeout=WAIT_MS)
            expect(page.locator("#opened-summary")).to_contain_text(run_id, timeout=WAIT_MS)
            expect(page.locator("#opened-gallery img").first).to_be_visible()
            page.screenshot(path=str(tmp_path / "history.png"), full_page=True)
            _no_error_badges(page)
        finally:
            browser.close()

    assert [t.action for t in history.session_turns(run_id)] == ["pin", "unpin", "continue", "stop"]
    if os.environ.get("ARPO_UI_SCREENSHOTS"):
        import shutil

        for name in ("session.png", "history.png"):
            shutil.copy(tmp_path / name, Path(os.environ["ARPO_UI_SCREENSHOTS"]) / name)


def test_a_login_guards_the_page_and_its_config(tmp_path):
    """What `arpo ui --auth` hands Gradio: the page and its config JSON need the login."""
    sync_playwright = _browser_or_skip()
    import urllib.error
    import urllib.request

    from playwright.sync_api import expect

    from arpo.app.web_ui import UiDefaults, build_ui
    from arpo.storage.history import History

    history = History.open(f"sqlite:///{tmp_path}/arpo.db")
    app = build_ui(history, UiDefaults.of(models="tiny", brain="offline")).queue()
    _, url, _ = app.launch(server_name="127.0.0.1", server_port=_free_port(), prevent_thread_lock=True, quiet=True,
                           footer_links=[], auth=[("alice", "s3cret")])
    try:
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/config", timeout=30) as reply:
                anonymous = reply.read().decode()
        except urllib.error.HTTPError as refusal:
            anonymous = f"HTTP {refusal.code}"
        assert "start" not in anonymous and "tiny-pixart" not in anonymous, "the config must need the login"
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.goto(url)
                expect(page.locator("#start")).to_have_count(0)
                page.get_by_label("username").fill("alice")
                page.get_by_label("password").fill("wrong")
                page.get_by_role("button", name="Login").click()
                expect(page.get_by_text("Incorrect Credentials")).to_be_visible(timeout=WAIT_MS)
                page.get_by_label("username").fill("alice")  # a refused login clears the form
                page.get_by_label("password").fill("s3cret")
                page.get_by_role("button", name="Login").click()
                expect(page.locator("#start")).to_be_visible(timeout=WAIT_MS)
            finally:
                browser.close()
    finally:
        app.close()
        history.close()
