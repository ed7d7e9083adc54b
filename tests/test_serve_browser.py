"""A real browser on `pengi-search serve`: Debian's chromium driven through Selenium and chromedriver.

The command runs as a user starts it, on a free loopback port over a small index built here. The browser types a query,
plays the top hit (the audio element must play from the hit's start) and another one by keyboard, follows "more like
this", opens the file page and plays a window by mouse and by keyboard, opens a file at a hit's window (where the Tab
key then starts); at phone width (390 px) no page scrolls sideways, and a sent form says it is busy, until its sending
is stopped or the page is come back to (a slow search can be changed meanwhile). The first Tab stop skips the header; a
refused upload focuses the box at fault. A long list asks for the waveforms of the hits in sight only, the others once
scrolled to. "More results" pages a search's results and an uploaded clip's similar sounds alike.
Every page loads all of its script modules (ES modules, app.js the one it names), as its Content-Security-Policy
allows.
Screenshots are saved in the test's folder (and in `$PENGI_SCREENSHOT_DIR` when set).

Without chromium and chromedriver the test is skipped, unless PENGI_REQUIRE_BROWSER=1 (as in CI), where it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

import pengi_search.serve
from pengi_search.db import Store

from .search_library import caption_library
from .serving import CLI, ServeProcess

REQUIRE_ENV = "PENGI_REQUIRE_BROWSER"
SCREENSHOT_ENV = "PENGI_SCREENSHOT_DIR"
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--autoplay-policy=no-user-gesture-required",
    "--window-size=1280,900",
)
WAIT_S = 30.0
UPLOAD_MB = 1


def missing(reason: str) -> None:
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(
            f"{reason}, and {REQUIRE_ENV}=1 requires the browser test (apt-get install chromium chromium-driver)"
        )
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_programs() -> tuple[str, str]:
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing("chromium or chromedriver is not installed")
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium is not installed")
    return browser, driver  # type: ignore[return-value]


@contextlib.contextmanager
def serving(root: Path, model_dir: Path, captioned: dict | None = None, script: str = CLI):
    """`pengi-search serve --port 0` in its own process, over a library of `captioned` sounds (by default the
    search tests' own); yields its address and the library. `script`: as `ServeProcess` takes it."""
    library = caption_library(str(root / "index.db"), root / "sounds", model_dir, captioned)
    served = ServeProcess(
        *("--db", library.db, "--model", str(model_dir), "--device", "cpu"),
        *("--max-upload-mb", str(UPLOAD_MB)),  # the test sounds are smaller
        home=root / "home",
        script=script,
    )
    try:
        address = served.address()
        assert address is not None, f"the server did not start: {''.join(served.output)}"
        yield address, library
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):
            served.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_model_dir, browser_programs):
    with serving(tmp_path_factory.mktemp("browser"), tiny_model_dir) as served:
        yield served


# A library of one-window sounds, more than a screen of hits holds: 45 bells.
CROWDED = {f"chimes/bell-{i:02d}.wav": (2.0, [f"a bell rings, chime {i}"]) for i in range(45)}


@pytest.fixture(scope="module")
def crowded_server(tmp_path_factory, tiny_model_dir, browser_programs):
    with serving(tmp_path_factory.mktemp("crowded"), tiny_model_dir, CROWDED) as (address, _library):
        yield address


@pytest.fixture(scope="module")
def driver(browser_programs, tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, chromedriver = browser_programs
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield chrome
    finally:
        chrome.quit()


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(lambda d: condition(d), message=what)


def audio_state(driver, audio) -> dict:
    return driver.execute_script(
        "const a = arguments[0]; return {t: a.currentTime, paused: a.paused, error: a.error && a.error.code};", audio
    )


def save_screenshot(driver, folder: Path, name: str) -> Path:
    path = folder / name
    driver.save_screenshot(str(path))
    if os.environ.get(SCREENSHOT_ENV):
        target = Path(os.environ[SCREENSHOT_ENV])
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target / name)
    return path


def top_hit(address: str, text: str) -> dict:
    """The best hit of a search through the server's API."""
    query = urllib.parse.urlencode({"q": text, "k": 1})
    with urllib.request.urlopen(f"{address}/api/search?{query}", timeout=WAIT_S) as answer:
        return json.load(answer)[0]


def press(driver, key: str) -> None:
    """A key pressed on whatever has the focus, as a user presses it."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(key).perform()


def play_by_keyboard(driver, hits, key: str, to: int):
    """From the first hit's waveform, `key` moves the focus to hit `to`'s, and Enter plays it: its player."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    waveforms = [hit.find_element(By.CSS_SELECTOR, "canvas.waveform") for hit in hits]
    driver.execute_script("arguments[0].focus()", waveforms[0])
    press(driver, key)
    assert driver.switch_to.active_element == waveforms[to]
    press(driver, Keys.ENTER)
    audio = hits[to].find_element(By.CSS_SELECTOR, "audio.player")
    wait_for(driver, lambda d: not audio_state(d, audio)["paused"], f"hit {to + 1} playing")
    return audio


def test_search_listen_and_browse_in_a_real_browser(server, driver, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    address, library = server
    rain = str(library.files["weather/rain.flac"])
    driver.get(f"{address}/")
    box = driver.find_element(By.NAME, "q")
    box.send_keys("thunder rolls in the distance", Keys.ENTER)
    hits = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"), "search results")
    top = hits[0]
    assert top.find_element(By.CSS_SELECTOR, ".path").text == rain
    assert top.find_element(By.CSS_SELECTOR, ".time").text == "3.0–10.0 s"
    assert top.find_element(By.CSS_SELECTOR, ".caption").text == "thunder rolls in the distance"

    # The waveform is drawn from the server's peaks.
    canvas = top.find_element(By.CSS_SELECTOR, "canvas.waveform")
    painted = "const c = arguments[0]; const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
    painted += "let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;"
    wait_for(driver, lambda d: d.execute_script(painted, canvas) > 100, "a drawn waveform")

    # Play the hit: the audio element plays the file from the hit's start.
    audio = top.find_element(By.CSS_SELECTOR, "audio.player")
    top.find_element(By.CSS_SELECTOR, "button.play-hit").click()
    wait_for(driver, lambda d: not audio_state(d, audio)["paused"], "the hit playing")
    started = audio_state(driver, audio)
    assert started["error"] is None and started["t"] >= 3.0, started
    wait_for(driver, lambda d: audio_state(d, audio)["t"] > started["t"] + 0.2, "time moving on")
    assert 3.0 <= audio_state(driver, audio)["t"] <= 10.0 + 0.5
    save_screenshot(driver, tmp_path, "search.png")

    # By keyboard: a waveform is reached from its hit by the arrow keys (each hit is one Tab stop, its link), Down
    # moves to the next hit's, Enter plays that hit.
    waveforms = [hit.find_element(By.CSS_SELECTOR, "canvas.waveform") for hit in hits]
    assert len(waveforms) > 1 and {w.get_attribute("tabindex") for w in waveforms} == {"-1"}
    second = play_by_keyboard(driver, hits, Keys.ARROW_DOWN, 1)
    assert audio_state(driver, audio)["paused"]  # one player at a time
    driver.execute_script("arguments[0].pause()", second)

    # More like this: audio -> audio from the hit's window; the file itself is left out.
    top.find_element(By.CSS_SELECTOR, "a.more").click()
    wait_for(driver, lambda d: "Sounds like" in d.find_element(By.TAG_NAME, "h1").text, "more like this")
    similar = [
        hit.find_element(By.CSS_SELECTOR, ".path").text for hit in driver.find_elements(By.CSS_SELECTOR, "li.hit")
    ]
    assert similar and rain not in similar

    # The file page: click the second window, and the file's player plays from its start.
    driver.find_element(By.CSS_SELECTOR, "h1 a").click()
    windows = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.window"), "the file's windows")
    assert [w.find_element(By.CSS_SELECTOR, ".time").text for w in windows] == ["0.0–7.0 s", "3.0–10.0 s"]
    spectrogram = driver.find_element(By.CSS_SELECTOR, "img.spectrogram")
    assert driver.execute_script("return arguments[0].naturalWidth", spectrogram) == 1200
    player = driver.find_element(By.ID, "file-player")
    windows[1].click()
    wait_for(driver, lambda d: not audio_state(d, player)["paused"], "the file playing")
    assert audio_state(driver, player)["t"] >= 3.0
    wait_for(driver, lambda d: "active" in windows[1].get_attribute("class"), "the window marked as playing")
    save_screenshot(driver, tmp_path, "file.png")

    # By keyboard: the first lane of the timeline is the Tab stop, the right arrow moves to the next window, Space
    # plays it; what a screen reader says of it is the file, the window's time and its caption.
    driver.execute_script("arguments[0].pause(); arguments[0].currentTime = 0;", player)
    lanes = driver.find_elements(By.CSS_SELECTOR, ".timeline .lane")
    assert [lane.get_attribute("tabindex") for lane in lanes] == ["0", "-1"]
    driver.execute_script("arguments[0].focus()", lanes[0])
    press(driver, Keys.ARROW_RIGHT)
    assert driver.switch_to.active_element == lanes[1]
    assert [lane.get_attribute("tabindex") for lane in lanes] == ["-1", "0"]  # Tab comes back to it
    assert lanes[1].get_attribute("aria-label") == f"Play {rain}, 3.0 to 10.0 s: thunder rolls in the distance"
    press(driver, Keys.SPACE)
    wait_for(driver, lambda d: not audio_state(d, player)["paused"], "the file playing from the second lane")
    assert audio_state(driver, player)["t"] >= 3.0

    # Enter on a window's link follows it (the window plays on Enter, but a key on the link is the link's).
    windows[1].find_element(By.CSS_SELECTOR, "a.more").send_keys(Keys.ENTER)
    wait_for(driver, lambda d: "Sounds like" in d.find_element(By.TAG_NAME, "h1").text, "the link followed")

    # Nothing was blocked by the content security policy, and no script failed.
    problems = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert problems == []


# The pages' script modules, as the page fetched them (a module imported by several is fetched once).
SCRIPTS_FETCHED = """
return performance.getEntriesByType("resource").map((entry) => new URL(entry.name).pathname)
  .filter((path) => path.endsWith(".js"));
"""


def test_every_page_loads_all_its_script_modules_as_its_content_security_policy_allows(server, driver):
    """The script is ES modules (app.js imports the others): each page loads them all from this server (the
    policy's `script-src 'self'`), with nothing refused or failing in the console."""
    address, _library = server
    file_id = top_hit(address, "a bell rings")["file_id"]
    modules = {f"/static/{path.name}" for path in (Path(pengi_search.serve.__file__).parent / "static").glob("*.js")}
    driver.get_log("browser")  # what earlier tests logged
    for path in ("/?q=a+bell+rings", "/upload", "/library", "/docs", f"/files/{file_id}"):
        driver.get(f"{address}{path}")
        wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete", f"{path} loaded")
        assert sorted(driver.execute_script(SCRIPTS_FETCHED)) == sorted(modules), path
    assert [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"] == []


def test_a_file_opened_at_a_window_is_marked_there_and_the_tab_key_reaches_that_window(server, driver):
    """A hit's link opens its file at the hit's window (`/files/ID#wWINDOW`): that window is the one marked, and
    the one the Tab key reaches in the list of windows and on the timeline, not the file's first."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    address, _library = server
    hit = top_hit(address, "thunder rolls in the distance")
    driver.get(f"{address}/files/{hit['file_id']}#w{hit['window_id']}")
    windows = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.window"), "the file's windows")
    assert len(windows) == 2 and windows[1].get_attribute("id") == f"w{hit['window_id']}"  # 3.0-10.0 s
    assert "active" in windows[1].get_attribute("class")
    assert [w.get_attribute("tabindex") for w in windows] == ["-1", "0"]
    lanes = driver.find_elements(By.CSS_SELECTOR, ".timeline .lane")
    assert [lane.get_attribute("tabindex") for lane in lanes] == ["-1", "0"]

    # Tab from the timeline: past the first window's link, the first window the key reaches is the hit's.
    driver.execute_script("arguments[0].focus()", lanes[1])
    for _ in range(4):
        press(driver, Keys.TAB)
        if driver.switch_to.active_element.tag_name == "li":
            break
    assert driver.switch_to.active_element == windows[1]


CONTROLS = "input, select, textarea, button, [role=button], a[href], audio[controls], img"


def test_every_control_has_a_name_and_a_refused_search_puts_the_focus_in_the_box_at_fault(server, driver):
    """What a screen reader says of each control (its computed name) on every page: none goes without one, the
    upload page's three "Clip" boxes are told apart by their forms' names, and the play buttons say no glyph."""
    from selenium.webdriver.common.by import By

    address, _library = server
    results, refused = f"{address}/?q=thunder+rolls+in+the+distance&k=3", f"{address}/?q=thunder&k=0&ext=flac"
    driver.get(results)
    file_page = driver.find_element(By.CSS_SELECTOR, "li.hit a.path").get_attribute("href")
    pages = [f"{address}{page}" for page in ("/", "/upload", "/library", "/docs", "/nowhere")]
    for page in (*pages, results, refused, file_page):  # the refused search's filters are open
        driver.get(page)
        unnamed = [
            element.get_attribute("outerHTML")[:120]
            for element in driver.find_elements(By.CSS_SELECTOR, CONTROLS)
            if element.is_displayed() and not element.accessible_name.strip()
        ]
        assert unnamed == [], page
    driver.get(results)
    assert {button.accessible_name for button in driver.find_elements(By.CSS_SELECTOR, "button.play-hit")} == {
        "Play hit"
    }
    driver.get(f"{address}/upload")
    forms = driver.find_elements(By.CSS_SELECTOR, "form.upload")
    assert [(form.aria_role, form.accessible_name) for form in forms] == [
        ("form", "Describe it"),
        ("form", "Find similar sounds"),
        ("form", "Classify it"),
    ]

    # A refused search: the focus is in the box at fault, not in the text box.
    driver.get(refused)
    assert driver.switch_to.active_element.get_attribute("name") == "k"
    assert driver.switch_to.active_element.get_attribute("aria-invalid") == "true"


def test_at_phone_width_nothing_scrolls_sideways_and_a_sent_form_says_it_is_busy(server, driver, tmp_path):
    from selenium.webdriver.common.by import By

    address, library = server
    rain = library.files["weather/rain.flac"]
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    )
    try:
        driver.get(f"{address}/?q=thunder+rolls+in+the+distance&by=window")
        file_link = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit a.path"), "results")[0]
        assert file_link.text == str(rain)
        widths = "return [document.documentElement.scrollWidth, window.innerWidth]"
        assert driver.execute_script(widths) == [390, 390]
        save_screenshot(driver, tmp_path, "phone-search.png")
        for page in (file_link.get_attribute("href"), f"{address}/library", f"{address}/docs"):
            driver.get(page)
            assert driver.execute_script(widths) == [390, 390], page
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    # A form on its way: its button says so and cannot send it twice (read before the next page arrives).
    driver.get(f"{address}/upload")
    driver.find_element(By.CSS_SELECTOR, "form.upload input[name=file]").send_keys(str(rain))
    sent = driver.execute_async_script(
        "const done = arguments[arguments.length - 1], form = document.querySelector('form.upload');"
        "form.requestSubmit(); setTimeout(() => { const b = form.querySelector('button');"
        "const state = [b.textContent, b.disabled, form.getAttribute('aria-busy')]; window.stop(); done(state); }, 5);"
    )
    assert sent == ["Describing…", True, "true"]


def test_play_hit_pauses_a_playing_hit_and_resumes_it_as_a_media_players_button_does(server, driver):
    """Pressed while its hit plays, *Play hit* pauses it and says it plays again; pressed again (Space on it, as on
    the hit's waveform), the hit goes on from where it was paused, not from its start."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    address, _library = server
    driver.get(f"{address}/?q=thunder+rolls+in+the+distance&k=1")
    hit = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"), "search results")[0]
    audio = hit.find_element(By.CSS_SELECTOR, "audio.player")
    button = hit.find_element(By.CSS_SELECTOR, "button.play-hit")
    button.click()
    wait_for(driver, lambda d: audio_state(d, audio)["t"] > 4.0, "the hit playing past its first second")  # from 3 s
    assert button.accessible_name == "Pause hit"
    button.click()
    wait_for(driver, lambda d: audio_state(d, audio)["paused"], "the hit paused")
    paused_at = audio_state(driver, audio)["t"]
    assert button.accessible_name == "Play hit" and 4.0 < paused_at < 10.0

    driver.execute_script("arguments[0].focus()", button)
    press(driver, Keys.SPACE)
    wait_for(driver, lambda d: not audio_state(d, audio)["paused"], "the hit playing again")
    assert audio_state(driver, audio)["t"] >= paused_at - 0.05  # from there: back at the start it would be near 3 s
    assert button.accessible_name == "Pause hit"

    driver.execute_script("arguments[0].focus()", hit.find_element(By.CSS_SELECTOR, "canvas.waveform"))
    press(driver, Keys.SPACE)
    wait_for(driver, lambda d: audio_state(d, audio)["paused"], "the hit paused from its waveform")
    assert button.accessible_name == "Play hit"


def test_the_timelines_windows_are_a_fingers_height_on_a_phone_and_as_they_were_with_a_mouse(server, driver):
    """The lanes of a file's timeline: 10 px tall on a desktop screen, too small a target for a finger on a phone,
    where they are 44 px (WCAG 2.5.5)."""

    address, _library = server
    page = f"{address}/files/{top_hit(address, 'thunder rolls in the distance')['file_id']}"
    heights = "return Array.from(document.querySelectorAll('.timeline .lane'), (lane) => lane.offsetHeight)"
    driver.get(page)
    assert set(driver.execute_script(heights)) == {10}
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride", {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}
    )
    try:
        driver.get(page)
        assert set(driver.execute_script(heights)) == {44}
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_the_first_tab_stop_is_a_link_past_the_header_shown_only_while_focused(server, driver):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    address, _library = server
    driver.get(f"{address}/docs")
    skip = driver.find_element(By.CSS_SELECTOR, "a.skip-link")
    below_the_top = "return arguments[0].getBoundingClientRect().bottom > 0"
    assert not driver.execute_script(below_the_top, skip)  # out of sight
    assert driver.find_element(By.CSS_SELECTOR, "nav a[aria-current=page]").text == "API"
    press(driver, Keys.TAB)
    assert driver.switch_to.active_element == skip and skip.accessible_name == "Skip to content"
    assert driver.execute_script(below_the_top, skip)  # in sight while focused
    press(driver, Keys.ENTER)
    assert driver.switch_to.active_element.tag_name == "main"
    assert not driver.execute_script(below_the_top, skip)
    press(driver, Keys.TAB)  # on into the page's content (its first link), not through the header's links
    assert driver.switch_to.active_element.get_attribute("href") == f"{address}/openapi.json"


def test_each_hit_is_one_tab_stop_and_the_arrow_keys_reach_its_other_controls(server, driver):
    """A keyboard user goes down the results one Tab a hit (its link to the file), not through every control of
    each (about six); the arrow keys reach the others: Left and Right within the hit, Down the same control of the
    next hit. Tab comes back to the control of a hit last focused; each control keeps its name."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    address, _library = server
    driver.get(f"{address}/?q=a+bell+rings&k=3")
    hits = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"), "search results")
    assert len(hits) == 3
    rows = [
        hit.find_elements(By.CSS_SELECTOR, "a.path, button.play-hit, canvas.waveform, audio.player, a.more")
        for hit in hits
    ]
    assert all(len(row) == 5 and all(control.accessible_name for control in row) for row in rows)
    in_list = "return !!arguments[0].closest('ol.hits')"
    stops = []
    for _ in range(60):  # from the search box, on past the list
        press(driver, Keys.TAB)
        active = driver.switch_to.active_element
        if driver.execute_script(in_list, active):
            stops.append(active)
        elif stops:
            break
    assert stops == [row[0] for row in rows]  # one stop a hit: its link

    driver.execute_script("arguments[0].focus()", rows[0][0])
    for control in rows[0][1:]:
        press(driver, Keys.ARROW_RIGHT)
        assert driver.switch_to.active_element == control, control.get_attribute("class")
    press(driver, Keys.ARROW_DOWN)  # More like this, of the next hit
    assert driver.switch_to.active_element == rows[1][4]
    ActionChains(driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).perform()
    assert driver.switch_to.active_element == rows[0][4]  # back to the first hit, where it was left
    press(driver, Keys.TAB)
    assert driver.switch_to.active_element == rows[1][4]
    note = driver.find_element(By.ID, "hits-keys")
    assert note.get_attribute("hidden") is None and "one stop of the Tab key" in note.get_attribute("textContent")
    assert driver.find_element(By.CSS_SELECTOR, "ol.hits").get_attribute("aria-describedby") == "hits-keys"


def test_a_refused_upload_puts_the_focus_in_the_box_at_fault_of_the_form_sent(server, driver):
    """The answer's address names its result (#result), where browsers skip autofocus: the box to correct is
    focused anyway, in the form that was sent."""
    from selenium.webdriver.common.by import By

    address, library = server
    driver.get(f"{address}/upload")
    form = driver.find_element(By.CSS_SELECTOR, "form[action^='/upload/similar']")
    form.find_element(By.NAME, "file").send_keys(str(library.files["bell.wav"]))
    driver.execute_script("arguments[0].open = true", form.find_element(By.CSS_SELECTOR, "details.filters"))
    form.find_element(By.NAME, "k").clear()
    form.find_element(By.NAME, "k").send_keys("0")
    driver.execute_script("arguments[0].noValidate = true; arguments[0].requestSubmit()", form)  # past the min="1"
    error = wait_for(driver, lambda d: d.find_elements(By.ID, "form-error"), "the refusal")[0]
    assert error.text.startswith("k: the number of results")
    focused = driver.switch_to.active_element
    assert focused.get_attribute("name") == "k" and focused.get_attribute("aria-invalid") == "true"
    assert driver.execute_script("return arguments[0].form.getAttribute('action')", focused) == "/upload/similar#result"


def test_an_uploaded_clips_described_windows_do_not_look_clickable(server, driver):
    """Unlike a file's windows (they play the file there), an uploaded clip's play nothing: no hand pointer."""
    from selenium.webdriver.common.by import By

    address, library = server
    driver.get(f"{address}/upload")
    form = driver.find_element(By.CSS_SELECTOR, "form[action^='/upload/describe']")
    form.find_element(By.NAME, "file").send_keys(str(library.files["weather/rain.flac"]))
    form.find_element(By.CSS_SELECTOR, "button").click()
    described = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#result li.window"), "the description")
    assert {window.value_of_css_property("cursor") for window in described} == {"auto"}
    driver.get(f"{address}/files/{top_hit(address, 'thunder rolls in the distance')['file_id']}")
    windows = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.window"), "the file's windows")
    assert {window.value_of_css_property("cursor") for window in windows} == {"pointer"}


# Send the search form, and stop the sending (as the browser's stop button or Esc does) while its button says that it
# is busy; then wait (2 s at most) for the form to be ready again. Returns the button's state busy, then after.
STOPPED_SEARCH = """
const done = arguments[arguments.length - 1], form = document.querySelector("form.search");
const button = form.querySelector("button");
const state = () => [button.textContent, button.disabled, form.getAttribute("aria-busy")];
form.q.value = arguments[0];
form.requestSubmit();
setTimeout(() => {
  const busy = state(), stopped = Date.now();
  window.stop();
  const ready = () => (!button.disabled || Date.now() - stopped > 2000 ? done([busy, state()]) : setTimeout(ready, 20));
  ready();
}, 50);
"""


def test_a_form_whose_sending_was_stopped_or_that_is_come_back_to_is_ready_again(server, driver):
    """A busy form is not left busy on a page that stays: when the user stops a slow sending, and when the Back
    button brings the page back from the browser's back/forward cache, as it was left (busy)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    address, _library = server
    driver.get(f"{address}/")
    # The browser holds this search's request: no answer comes until the sending is stopped.
    driver.execute_cdp_cmd("Fetch.enable", {"patterns": [{"urlPattern": "*q=never+answered*"}]})
    try:
        busy, after = driver.execute_async_script(STOPPED_SEARCH, "never answered")
    finally:
        driver.execute_cdp_cmd("Fetch.disable", {})
    assert busy == ["Searching…", False, "true"]  # a search's button stays enabled (see the test below)
    assert after == ["Search", False, None]

    driver.execute_script("window.kept = true")  # gone if Back loaded the page anew instead of restoring it
    box = driver.find_element(By.NAME, "q")
    box.clear()
    box.send_keys("a bell rings", Keys.ENTER)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"), "search results")
    driver.back()
    assert driver.execute_script("return window.kept === true")
    form = driver.find_element(By.CSS_SELECTOR, "form.search")
    button = form.find_element(By.TAG_NAME, "button")
    assert [button.text, button.is_enabled(), form.get_attribute("aria-busy")] == ["Search", True, None]


# Send the search form with arguments[0] (a search the browser holds), then, while it is on its way, the same again,
# and then arguments[1]. Returns the form's state while busy, and whether each sending was stopped by the page.
CHANGED_SEARCH = """
const [slow, changed, done] = arguments, form = document.querySelector("form.search");
const button = form.querySelector("button"), stopped = [];
form.addEventListener("submit", (event) => setTimeout(() => stopped.push(event.defaultPrevented)));
form.q.value = slow;
form.requestSubmit();
setTimeout(() => {
  const busy = [button.textContent, button.disabled, form.getAttribute("aria-busy")];
  form.requestSubmit();
  setTimeout(() => {
    done([busy, [...stopped]]);
    form.q.value = changed;
    form.requestSubmit();
  });
}, 50);
"""


def test_a_slow_search_can_be_changed_while_it_is_on_its_way_but_not_sent_twice(server, driver):
    """A user who thinks better of a slow search types another and presses Enter: it is sent (the browser drops the
    first), where a disabled button made Enter do nothing until the first was stopped (HTML's implicit submission
    needs the form's default button enabled). The same search again is not sent twice."""
    from selenium.webdriver.common.by import By

    address, _library = server
    driver.get(f"{address}/")
    driver.execute_cdp_cmd("Fetch.enable", {"patterns": [{"urlPattern": "*q=never+answered*"}]})
    try:
        busy, stopped = driver.execute_async_script(CHANGED_SEARCH, "never answered", "a bell rings")
        hits = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit .caption"), "the changed search")
    finally:
        driver.execute_cdp_cmd("Fetch.disable", {})
    assert busy == ["Searching…", False, "true"]  # says so, and Enter in the box still sends it
    assert stopped == [False, True]  # sent; the same again, not
    assert driver.execute_script("return location.search") == "?q=a+bell+rings"
    assert hits[0].text == "a bell rings"


def test_a_clip_past_the_upload_limit_is_refused_in_its_form_before_it_is_sent(server, driver, tmp_path):
    """The server would read it all, then refuse it with 413 on a page of its own, the labels typed lost: the page
    says it first, where a refused upload is said, the box marked and focused, all typed kept, nothing sent. A clip
    within the limit is sent then."""
    from selenium.webdriver.common.by import By

    address, library = server
    big = tmp_path / "big.wav"
    big.write_bytes(bytes(UPLOAD_MB * (3 << 19)))  # 1.5 times the limit
    driver.get(f"{address}/upload")
    driver.execute_script("window.kept = true")  # gone if the page was left
    form = driver.find_element(By.CSS_SELECTOR, "form[action^='/upload/classify']")
    form.find_element(By.NAME, "labels").send_keys("a bell rings\nrain")
    clip = form.find_element(By.NAME, "file")
    clip.send_keys(str(big))
    button = form.find_element(By.CSS_SELECTOR, "button")
    button.click()
    error = wait_for(driver, lambda d: d.find_elements(By.ID, "form-error"), "the refusal")[0]
    assert error.text == f"big.wav: larger than the server's limit of {UPLOAD_MB} MiB"
    assert driver.execute_script("return window.kept === true")
    assert driver.switch_to.active_element == clip and clip.get_attribute("aria-invalid") == "true"
    assert form.find_element(By.NAME, "labels").get_attribute("value") == "a bell rings\nrain"
    assert (button.text, button.is_enabled(), form.get_attribute("aria-busy")) == ("Classify", True, None)

    clip.send_keys(str(library.files["bell.wav"]))  # another clip: the mark and the refusal go
    assert clip.get_attribute("aria-invalid") is None and not driver.find_elements(By.ID, "form-error")
    button.click()
    ranked = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "table.ranked"), "the classification")
    assert "a bell rings" in ranked[0].text


def test_a_searchs_address_holds_only_the_boxes_that_were_set(server, driver):
    """To be read and shared: no empty filter and no default (`k=10`, `by=file`), on the search page and "more
    like this"; the boxes are all usable again afterwards (Back shows the page as it was left)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    address, _library = server
    query = "return location.pathname + location.search"
    driver.get(f"{address}/")
    driver.find_element(By.NAME, "q").send_keys("a bell rings", Keys.ENTER)
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"), "search results")
    assert driver.execute_script(query) == "/?q=a+bell+rings"

    form = driver.find_element(By.CSS_SELECTOR, "form.search")
    driver.execute_script("const f = arguments[0]; f.k.value = '3'; f.by.value = 'window'; f.ext.value = 'wav';", form)
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(driver, lambda d: "k=3" in d.current_url, "the narrowed search")
    assert driver.execute_script(query) == "/?q=a+bell+rings&k=3&by=window&ext=wav"

    driver.find_element(By.CSS_SELECTOR, "li.hit a.more").click()  # "more like this" keeps what was set
    wait_for(driver, lambda d: "Sounds like" in d.find_element(By.TAG_NAME, "h1").text, "more like this")
    window = driver.find_element(By.NAME, "window_id").get_attribute("value")
    assert driver.execute_script(query) == f"/similar?window_id={window}&k=3&by=window&ext=wav"
    form = driver.find_element(By.CSS_SELECTOR, "form.search")
    driver.execute_script("arguments[0].k.value = '10'", form)  # back to its default
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(driver, lambda d: "k=3" not in d.current_url, "the refined search")
    assert driver.execute_script(query) == f"/similar?window_id={window}&by=window&ext=wav"

    driver.back()
    wait_for(driver, lambda d: "k=3" in d.current_url, "the page before")
    boxes = driver.find_elements(By.CSS_SELECTOR, "form.search [name]")
    assert boxes and not [box.get_attribute("name") for box in boxes if not box.is_enabled()]


def test_the_hybrid_weights_box_is_shown_with_the_hybrid_ranking_only_and_sent_with_it_only(server, driver):
    """Only the hybrid ranking reads the weight: its box shows while that ranking is chosen, and a weight typed
    there is not sent with another ranking (which the server refuses, as the API does). A page that refused one
    shows its box, in focus, to be corrected, until the ranking is changed. The box was shown with every ranking."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    address, _library = server
    driver.get(f"{address}/?q=a+bell+rings")
    form = driver.find_element(By.CSS_SELECTOR, "form.search")
    form.find_element(By.TAG_NAME, "summary").click()  # the filters
    weight, ranking = form.find_element(By.NAME, "hybrid_weight"), Select(form.find_element(By.NAME, "rank"))
    assert form.find_element(By.NAME, "k").is_displayed() and not weight.is_displayed()
    ranking.select_by_value("hybrid")
    assert weight.is_displayed()
    weight.send_keys("0.25")
    ranking.select_by_value("caption")
    assert not weight.is_displayed()
    form.find_element(By.TAG_NAME, "button").click()
    wait_for(driver, lambda d: "rank=caption" in d.current_url, "the search ranked by captions")
    assert driver.execute_script("return location.search") == "?q=a+bell+rings&rank=caption"
    assert driver.find_elements(By.CSS_SELECTOR, "li.hit") and not driver.find_elements(By.ID, "form-error")

    driver.get(f"{address}/?q=a+bell+rings&rank=caption&hybrid_weight=0.7")  # refused: the weight at fault
    weight = driver.find_element(By.NAME, "hybrid_weight")
    assert weight.is_displayed() and driver.switch_to.active_element == weight
    Select(driver.find_element(By.NAME, "rank")).select_by_value("audio")
    assert not weight.is_displayed()


def test_a_hit_that_cannot_be_played_any_more_says_why_and_plays_once_it_can_again(server, driver):
    """The page was made while the file was there; gone since (or the server restarting), *Play hit* says why below
    the player, as a page made then says it, instead of doing nothing. Pressed again once the file is back, it plays
    from the hit's start (a player that failed is loaded anew), and the note goes."""
    from selenium.webdriver.common.by import By

    address, library = server
    rain = library.files["weather/rain.flac"]
    aside = rain.with_name("rain.flac.aside")
    driver.get(f"{address}/?q=thunder+rolls+in+the+distance&k=1")
    hit = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"), "search results")[0]
    audio = hit.find_element(By.CSS_SELECTOR, "audio.player")
    button = hit.find_element(By.CSS_SELECTOR, "button.play-hit")
    rain.rename(aside)
    try:
        button.click()
        note = wait_for(driver, lambda d: hit.find_elements(By.CSS_SELECTOR, ".unplayable"), "why it did not play")[0]
        assert note.text == "The audio cannot be played: no longer readable on disk (no such file or directory)"
        assert note.get_attribute("role") == "alert"
    finally:
        aside.rename(rain)
    button.click()
    wait_for(driver, lambda d: audio_state(d, audio)["t"] > 0, "the hit playing again")
    assert audio_state(driver, audio)["error"] is None and audio_state(driver, audio)["t"] >= 3.0
    wait_for(driver, lambda d: not hit.find_elements(By.CSS_SELECTOR, ".unplayable"), "the note gone")
    driver.execute_script("arguments[0].pause()", audio)


# The element in focus (its start, whether it is the page itself or a player, which draws its own ring), its outline's
# style and colour, and the backgrounds behind it, from its parent outwards.
FOCUS_RING = """
const e = document.activeElement, style = getComputedStyle(e), behind = [];
for (let p = e.parentElement; p; p = p.parentElement) behind.push(getComputedStyle(p).backgroundColor);
const ownRing = ["BODY", "AUDIO"].includes(e.tagName);
return [e.outerHTML.slice(0, 80), ownRing, style.outlineStyle, style.outlineColor, behind];
"""


def rgba(css: str) -> tuple[float, float, float, float]:
    """A computed colour, `rgb(r, g, b)` or `rgba(r, g, b, a)`."""
    parts = [float(part) for part in css[css.index("(") + 1 : -1].split(",")]
    return (*parts[:3], parts[3] if len(parts) == 4 else 1.0)  # type: ignore[return-value]


def contrast(ring: str, behind: list[str]) -> float:
    """WCAG's contrast ratio of a colour against the backgrounds behind it laid over white, the nearest on top."""
    shown = (255.0, 255.0, 255.0)
    for layer in reversed(behind):
        *colour, alpha = rgba(layer)
        shown = tuple(c * alpha + s * (1 - alpha) for c, s in zip(colour, shown, strict=True))

    def luminance(rgb) -> float:
        linear = [c / 255 / 12.92 if c / 255 <= 0.03928 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]

    light, dark = sorted((luminance(rgba(ring)[:3]), luminance(shown)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def test_every_tab_stop_shows_a_focus_ring_that_stands_out_from_what_is_behind_it(server, driver):
    """WCAG's 3:1 for what shows where the focus is, on the dark header as on the page: each Tab stop of a page of
    results, round to the search box again."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    address, _library = server
    driver.get(f"{address}/?q=a+bell+rings&k=2")
    box = driver.find_element(By.NAME, "q")
    assert driver.switch_to.active_element == box
    faint = []
    for _ in range(60):
        press(driver, Keys.TAB)
        if driver.switch_to.active_element == box:
            break
        element, own_ring, style, ring, behind = driver.execute_script(FOCUS_RING)
        if not own_ring and (style == "none" or contrast(ring, behind) < 3):
            faint.append((element, style, round(contrast(ring, behind), 2)))
    assert driver.switch_to.active_element == box
    assert faint == []


# Drop a clip (a window's WAV, fetched from the server: arguments[0]) named arguments[1] on the element arguments[2],
# as a file manager drops one; returns whether the page let the browser do its own thing with it (open it).
DROP_CLIP = """
const [source, name, target, done] = arguments;
fetch(source).then((answer) => answer.blob()).then((wav) => {
  const files = new DataTransfer();
  files.items.add(new File([wav], name, { type: "audio/wav" }));
  const options = { dataTransfer: files, bubbles: true, cancelable: true };
  target.dispatchEvent(new DragEvent("dragover", options));
  done(target.dispatchEvent(new DragEvent("drop", options)));
});
"""


def test_a_clip_dropped_on_an_upload_form_is_its_clip_and_one_dropped_beside_them_is_not_opened(server, driver):
    """Dropped anywhere on the "Find similar sounds" form, the clip fills its Clip box, and the form finds sounds
    like it; dropped on the page's heading, it is not opened by the browser in the page's place."""
    from selenium.webdriver.common.by import By

    address, _library = server
    window = top_hit(address, "a bell rings")["window_id"]
    driver.get(f"{address}/upload")
    driver.execute_script("window.kept = true")  # gone if the page was left
    heading = driver.find_element(By.TAG_NAME, "h1")
    assert driver.execute_async_script(DROP_CLIP, f"/api/windows/{window}/audio", "elsewhere.wav", heading) is False

    form = driver.find_element(By.CSS_SELECTOR, "form[action^='/upload/similar']")
    on_its_heading = form.find_element(By.TAG_NAME, "h2")
    assert driver.execute_async_script(DROP_CLIP, f"/api/windows/{window}/audio", "bell.wav", on_its_heading) is False
    assert driver.execute_script("return window.kept === true")
    clip = form.find_element(By.NAME, "file")
    assert driver.execute_script("return Array.from(arguments[0].files, (f) => f.name)", clip) == ["bell.wav"]
    form.find_element(By.CSS_SELECTOR, "button").click()
    result = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#result h2"), "the similar sounds")[0]
    assert result.text == "Sounds like bell.wav"


def test_more_results_adds_the_next_page_which_a_reload_keeps(server, driver):
    """A sound designer goes down the list: "More results" adds the next page below the hits (ranked on, playable,
    reached by the arrow keys from the hits before), the focus on its first hit; the address says how many pages
    the page shows, so that a reload shows them all; once every result is shown, the link goes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    address, _library = server
    driver.get_log("browser")  # what earlier tests logged
    driver.get(f"{address}/?q=a+bell+rings&by=window&k=2")
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 2, "the first page")
    driver.find_element(By.CSS_SELECTOR, "a.more-results").click()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 4, "the next page added")
    hits = driver.find_elements(By.CSS_SELECTOR, "li.hit")
    assert [hit.find_element(By.CSS_SELECTOR, ".rank").text for hit in hits] == ["1", "2", "3", "4"]
    assert driver.execute_script("return location.pathname + location.search + location.hash") == (
        "/?q=a+bell+rings&by=window&k=2&pages=2"
    )
    assert driver.switch_to.active_element == hits[2].find_element(By.CSS_SELECTOR, "a.path")

    links = [hit.find_element(By.CSS_SELECTOR, "a.path").get_attribute("tabindex") for hit in hits]
    assert links == ["0", "0", "0", "0"]  # each added hit one Tab stop too, its link
    added = play_by_keyboard(driver, hits, Keys.END, 3)
    driver.execute_script("arguments[0].pause()", added)

    driver.refresh()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 4, "the 4 results after a reload")
    driver.find_element(By.CSS_SELECTOR, "a.more-results").click()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 5, "the last result")
    assert not driver.find_elements(By.CSS_SELECTOR, "a.more-results")  # 1 of 2: every result is shown
    assert driver.execute_script("return location.search") == "?q=a+bell+rings&by=window&k=2&pages=3"
    problems = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert problems == []


def test_more_results_pages_an_uploaded_clips_similar_sounds_which_a_reload_keeps(server, driver):
    """As a search's: the clip is sent once, and its results have an address of their own; "More results" adds
    the next page, the address then says so, and a reload shows them all (the server keeps the clip's embedding)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    address, library = server
    driver.get_log("browser")  # what earlier tests logged
    driver.get(f"{address}/upload")
    form = driver.find_element(By.CSS_SELECTOR, "form[action^='/upload/similar']")
    form.find_element(By.NAME, "file").send_keys(str(library.files["bell.wav"]))
    form.find_element(By.TAG_NAME, "summary").click()  # the filters
    results = form.find_element(By.NAME, "k")
    results.clear()
    results.send_keys("2")
    Select(form.find_element(By.NAME, "by")).select_by_value("window")
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 2, "the first page")
    shown = driver.execute_script("return location.pathname + location.search + location.hash")
    assert shown.startswith("/upload/similar?upload=") and shown.endswith("&k=2&by=window#result")

    driver.find_element(By.CSS_SELECTOR, "a.more-results").click()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 4, "the next page added")
    hits = driver.find_elements(By.CSS_SELECTOR, "li.hit")
    assert [hit.find_element(By.CSS_SELECTOR, ".rank").text for hit in hits] == ["1", "2", "3", "4"]
    longer = driver.execute_script("return location.pathname + location.search")
    assert longer == shown.removesuffix("#result") + "&pages=2"
    assert driver.switch_to.active_element == hits[2].find_element(By.CSS_SELECTOR, "a.path")

    driver.refresh()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 4, "the 4 results after a reload")
    assert driver.find_element(By.CSS_SELECTOR, "#result h2").text == "Sounds like bell.wav"
    driver.find_element(By.CSS_SELECTOR, "a.more-results").click()  # bell.wav itself is left out: 4 in all
    wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#result .empty"), "no more results")
    assert driver.find_element(By.CSS_SELECTOR, "#result .empty").text == "No more results."
    problems = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert problems == []


def press_own_play(driver, audio) -> None:
    """A click on the audio element's own play button (the first of its controls, at its left end)."""
    from selenium.webdriver.common.action_chains import ActionChains

    width = audio.size["width"]
    ActionChains(driver).move_to_element_with_offset(audio, -width // 2 + 16, 0).click().perform()


@pytest.mark.parametrize("page", ["hit", "file"])
def test_a_players_own_play_button_plays_again_once_the_audio_is_back(server, driver, page):
    """The player's own play button, like *Play hit*, asks the server anew after a failure: pressed while the file
    is gone, the player says why; pressed once it is back, it plays (a hit from its start)."""
    from selenium.webdriver.common.by import By

    address, library = server
    rain = library.files["weather/rain.flac"]
    aside = rain.with_name("rain.flac.aside")
    hit = top_hit(address, "thunder rolls in the distance")
    if page == "hit":
        driver.get(f"{address}/?q=thunder+rolls+in+the+distance&k=1")
        audio, start = driver.find_element(By.CSS_SELECTOR, "li.hit audio.player"), 3.0
    else:
        driver.get(f"{address}/files/{hit['file_id']}")
        audio, start = driver.find_element(By.ID, "file-player"), 0.0
    wait_for(driver, lambda d: d.execute_script("return document.readyState") == "complete", "the page")
    rain.rename(aside)
    try:
        press_own_play(driver, audio)
        wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, ".unplayable"), "why it did not play")
    finally:
        aside.rename(rain)
    press_own_play(driver, audio)
    wait_for(driver, lambda d: audio_state(d, audio)["t"] > start + 0.1, "playing again")
    assert audio_state(driver, audio)["error"] is None
    wait_for(driver, lambda d: not d.find_elements(By.CSS_SELECTOR, ".unplayable"), "the note gone")
    driver.execute_script("arguments[0].pause()", audio)


def test_a_player_started_in_one_tab_pauses_the_players_of_the_others(server, driver):
    """Two tabs of the same server: a hit played in one pauses what plays in the other, which would otherwise go
    on over it (here a player looping, so that it does not stop by itself)."""
    from selenium.webdriver.common.by import By

    address, _library = server
    first = driver.current_window_handle
    driver.get(f"{address}/?q=thunder+rolls+in+the+distance&k=1")
    looping = driver.find_element(By.CSS_SELECTOR, "li.hit audio.player")
    driver.execute_script("arguments[0].loop = true; arguments[0].play()", looping)
    wait_for(driver, lambda d: audio_state(d, looping)["t"] > 0.2, "the first tab playing")
    driver.switch_to.new_window("window")
    second = driver.current_window_handle
    try:
        driver.get(f"{address}/?q=a+bell+rings&k=1")
        driver.find_element(By.CSS_SELECTOR, "li.hit button.play-hit").click()
        playing = driver.find_element(By.CSS_SELECTOR, "li.hit audio.player")
        wait_for(driver, lambda d: not audio_state(d, playing)["paused"], "the second tab playing")
        driver.switch_to.window(first)
        wait_for(driver, lambda d: audio_state(d, looping)["paused"], "the first tab's player paused")
        driver.switch_to.window(second)
        assert not audio_state(driver, playing)["paused"]  # it does not pause itself
    finally:
        for handle in driver.window_handles:
            if handle != first:
                driver.switch_to.window(handle)
                driver.close()
        driver.switch_to.window(first)
        driver.execute_script("arguments[0].pause()", looping)


# The waveforms the page has asked the server for (one entry per request, as the Performance API records them), and
# where each hit's waveform is: its top and bottom, against the viewport's height.
WAVEFORMS = """
const asked = performance.getEntriesByType("resource").map((entry) => new URL(entry.name).pathname);
const where = (canvas) => ({ peaks: canvas.dataset.peaks, ...canvas.getBoundingClientRect().toJSON() });
return {
  asked: asked.filter((path) => path.endsWith("/peaks")),
  waveforms: Array.from(document.querySelectorAll("canvas.waveform"), where),
  height: innerHeight,
};
"""
# Scroll down by half a screen, as a user's wheel does, and wait for the frame after it (where the page sees what
# came into view); true when the page moved, false at its end.
SCROLL_DOWN = """
const done = arguments[arguments.length - 1], before = scrollY;
scrollBy(0, innerHeight / 2);
requestAnimationFrame(() => requestAnimationFrame(() => done(scrollY > before)));
"""


@dataclass
class Waveforms:
    """The waveforms the page has asked for so far (each time it asked), and of which hits: all of them, those in
    view, and those further below than a screen past the viewport."""

    asked: list[str]
    every: set[str]
    in_view: set[str]
    far_below: set[str]


def waveforms_near(driver) -> Waveforms:
    seen = driver.execute_script(WAVEFORMS)
    height, waveforms = seen["height"], seen["waveforms"]
    return Waveforms(
        seen["asked"],
        {w["peaks"] for w in waveforms},
        {w["peaks"] for w in waveforms if w["bottom"] > 0 and w["top"] < height},
        {w["peaks"] for w in waveforms if w["top"] > 2 * height + 1},
    )


def waveforms_once(driver, which: Callable[[Waveforms], set[str]], what: str) -> Waveforms:
    """The waveforms once those `which` names have all been asked for."""

    def all_asked(d) -> Waveforms | None:
        seen = waveforms_near(d)
        return seen if which(seen) <= set(seen.asked) else None

    return wait_for(driver, all_asked, what)


def only_those_in_sight_asked(driver) -> list[str]:
    """Once the hits in view have their waveforms asked for: what was asked, which is none of those far below."""
    seen = waveforms_once(driver, lambda seen: seen.in_view, "the waveforms in view")
    assert seen.far_below, "the list reaches further than a screen below the viewport"
    assert not seen.far_below & set(seen.asked), "no waveform of a hit far below the viewport is asked for"
    return seen.asked


def scroll_to_the_end(driver) -> None:
    while driver.execute_async_script(SCROLL_DOWN):
        pass


def every_waveform_asked_once(driver) -> None:
    seen = waveforms_once(driver, lambda seen: seen.every, "every waveform")
    assert sorted(seen.asked) == sorted(seen.every), "each waveform is asked for once"


def test_a_long_list_asks_only_for_the_waveforms_in_sight_and_the_others_once_scrolled_to(crowded_server, driver):
    """A reloaded list of 30 hits (`pages=2`) asks the server for the waveforms of the hits in view (and of those
    a screen ahead), not for those further down, which it asks for as they are scrolled to: at the end of the list,
    each hit's once. The hits "More results" adds are asked for in the same way."""
    from selenium.webdriver.common.by import By

    driver.get_log("browser")  # what earlier tests logged
    driver.get(f"{crowded_server}/?q=a+bell+rings&by=window&k=15&pages=2")
    assert len(driver.find_elements(By.CSS_SELECTOR, "li.hit")) == 30
    assert len(only_those_in_sight_asked(driver)) < 30
    scroll_to_the_end(driver)
    every_waveform_asked_once(driver)

    driver.find_element(By.CSS_SELECTOR, "a.more-results").click()
    wait_for(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "li.hit")) == 45, "the next page added")
    assert len(only_those_in_sight_asked(driver)) < 45
    scroll_to_the_end(driver)
    every_waveform_asked_once(driver)
    problems = [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert problems == []


def test_a_hit_gone_from_the_index_since_the_page_was_made_says_so_when_played(
    tmp_path_factory, tiny_model_dir, driver
):
    """The library is indexed again while the page is open, and a hit's file is gone from it (removed, moved, or
    indexed again: its windows are new ones): *Play hit* says so and what to do, without the ids the page never
    shows, where it said "no such file in the index" of a file the page lists."""
    from selenium.webdriver.common.by import By

    two = {"bell.wav": (2.0, ["a bell rings"]), "hum.wav": (2.0, ["a low hum"])}
    with serving(tmp_path_factory.mktemp("reindexed"), tiny_model_dir, two) as (address, library):
        driver.get(f"{address}/?q=a+bell+rings&k=1")
        hit = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"), "search results")[0]
        with Store.open(library.db) as store:
            assert store.remove(str(library.files["bell.wav"])) == 1
        hit.find_element(By.CSS_SELECTOR, "button.play-hit").click()
        note = wait_for(driver, lambda d: hit.find_elements(By.CSS_SELECTOR, ".unplayable"), "why it did not play")[0]
        assert note.text == (
            "The audio cannot be played: no longer in the index (its file was indexed again, moved or removed "
            "since): search again"
        )


def test_a_hits_waveform_says_what_pressing_it_does_play_or_pause(server, driver):
    """Its spoken label follows the player, as *Play hit* does: "Pause ..." while the hit plays, where it said
    "Play"; pressed with no pointer (a screen reader's click), it pauses the hit, as Enter does, and says "Play"."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    address, library = server
    bell = str(library.files["bell.wav"])
    driver.get(f"{address}/?q=a+bell+rings&k=1")
    canvas = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit canvas.waveform"), "a hit")[0]
    audio = driver.find_element(By.CSS_SELECTOR, "li.hit audio.player")
    said = f"{bell}, 0.0 to 2.0 s: a bell rings"
    assert canvas.get_attribute("aria-label") == f"Play {said}"
    driver.execute_script("arguments[0].focus()", canvas)
    press(driver, Keys.ENTER)
    wait_for(driver, lambda d: canvas.get_attribute("aria-label") == f"Pause {said}", "the label saying pause")
    assert not audio_state(driver, audio)["paused"]
    driver.execute_script("arguments[0].click()", canvas)  # as assistive technology clicks: no pointer, detail 0
    wait_for(driver, lambda d: audio_state(d, audio)["paused"], "the hit paused")
    assert canvas.get_attribute("aria-label") == f"Play {said}"


# A server that refuses the first two requests for a file's audio as busy (the player's, and its look at why) and
# the first of a spectrogram, and says to ask again in a second rather than five.
BUSY_AT_FIRST = """
from pengi_search.serve import errors
from pengi_search.serve.conversions import ConversionsBusy
from pengi_search.serve.service import Service

errors.RETRY_AFTER_S = 1


def busy_at_first(given, refusals):
    def refused_at_first(self, file_id):
        if refusals[0] > 0:
            refusals[0] -= 1
            raise ConversionsBusy()
        return given(self, file_id)

    return refused_at_first


Service.file_audio = busy_at_first(Service.file_audio, [2])
Service.spectrogram = busy_at_first(Service.spectrogram, [1])
from pengi_search.cli import app

app()
"""


def test_a_player_refused_while_the_server_is_busy_says_so_and_plays_by_itself_when_it_may(
    tmp_path_factory, tiny_model_dir, driver
):
    """A hit asked for while the server's audio work is full (503, Retry-After) says why and that it will try
    again, and plays from the hit's start once the server gives the audio, the note gone, with no second press; a
    spectrogram refused so is asked for again too."""
    from selenium.webdriver.common.by import By

    one = {"hum.wav": (2.0, ["a low hum"])}
    with serving(tmp_path_factory.mktemp("busy"), tiny_model_dir, one, BUSY_AT_FIRST) as (address, _library):
        driver.get(f"{address}/?q=a+low+hum&k=1")
        hit = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"), "search results")[0]
        audio = hit.find_element(By.CSS_SELECTOR, "audio.player")
        hit.find_element(By.CSS_SELECTOR, "button.play-hit").click()
        note = wait_for(driver, lambda d: hit.find_elements(By.CSS_SELECTOR, ".unplayable"), "why it did not play")[0]
        assert note.text == (
            "The audio cannot be played: the server is busy converting audio for other requests; trying again in 1 s"
        )
        wait_for(driver, lambda d: audio_state(d, audio)["t"] > 0.1, "the hit playing by itself")
        assert audio_state(driver, audio)["error"] is None
        wait_for(driver, lambda d: not hit.find_elements(By.CSS_SELECTOR, ".unplayable"), "the note gone")
        driver.execute_script("arguments[0].pause()", audio)

        # The file's page: its spectrogram, refused first, comes once asked again.
        hit.find_element(By.CSS_SELECTOR, "a.path").click()
        image = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "img.spectrogram"), "the file's page")[0]
        wait_for(driver, lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0, "the spectrogram")


def test_a_player_that_failed_asks_the_server_nothing_more_until_it_is_pressed_again(server, driver):
    """Chromium asks a failed source again as soon as the player is loaded anew, whatever its preload: a player that
    failed asked for its audio hundreds of times a second, for as long as the page stayed open. It asks once (and
    the page once, for why), then nothing until pressed again."""
    from selenium.webdriver.common.by import By

    address, library = server
    bell = library.files["bell.wav"]
    aside = bell.with_name("bell.wav.aside")
    driver.get(f"{address}/?q=a+bell+rings&k=1")
    hit = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"), "search results")[0]
    driver.get_log("browser")  # what the page logged before
    bell.rename(aside)
    try:
        hit.find_element(By.CSS_SELECTOR, "button.play-hit").click()
        wait_for(driver, lambda d: hit.find_elements(By.CSS_SELECTOR, ".unplayable"), "why it did not play")
        driver.execute_async_script("setTimeout(arguments[0], 1000)")  # a second in which a loop would ask again
        failed = [entry["message"] for entry in driver.get_log("browser") if "/audio" in entry["message"]]
    finally:
        aside.rename(bell)
    assert len(failed) == 2, failed  # the player's request, and the page's look at why


# A server told by files in its home: it refuses a file's audio as busy while `busy` is there, refuses the next
# `spectrogram-refusals` (a number, 0 without it) spectrograms as busy, and answers that the file is gone from disk
# (404) to those asked for while `spectrogram-gone` is there; each spectrogram asked for is a line of
# `spectrograms-asked`. It says to ask again in a second rather than five.
BUSY_WHILE_TOLD = """
import os
from http import HTTPStatus
from pathlib import Path

from pengi_search.serve import errors
from pengi_search.serve.conversions import ConversionsBusy
from pengi_search.serve.errors import RequestError
from pengi_search.serve.service import Service

errors.RETRY_AFTER_S = 1
home = Path(os.environ["PENGI_SEARCH_HOME"])
given_audio, given_spectrogram = Service.file_audio, Service.spectrogram


def file_audio(self, file_id):
    if (home / "busy").exists():
        raise ConversionsBusy()
    return given_audio(self, file_id)


def spectrogram(self, file_id):
    with (home / "spectrograms-asked").open("a") as asked:
        asked.write(f"{file_id}\\n")
    refusals = home / "spectrogram-refusals"
    left = int(refusals.read_text()) if refusals.exists() else 0
    if left > 0:
        refusals.write_text(str(left - 1))
        raise ConversionsBusy()
    if (home / "spectrogram-gone").exists():
        raise RequestError(f"file {file_id}", "no longer readable on disk", HTTPStatus.NOT_FOUND)
    return given_spectrogram(self, file_id)


Service.file_audio, Service.spectrogram = file_audio, spectrogram
from pengi_search.cli import app

app()
"""


@pytest.fixture(scope="module")
def busy_when_told(tmp_path_factory, tiny_model_dir, browser_programs):
    """The address of a `BUSY_WHILE_TOLD` server over one sound, the sound's path and the server's home."""
    root = tmp_path_factory.mktemp("busy-when-told")
    (root / "home").mkdir()  # where the test tells the server, before it makes its own there
    one = {"hum.wav": (2.0, ["a low hum"])}
    with serving(root, tiny_model_dir, one, BUSY_WHILE_TOLD) as (address, library):
        yield address, library.files["hum.wav"], root / "home"


BUSY_NOTE = "The audio cannot be played: the server is busy converting audio for other requests"


@contextlib.contextmanager
def busy_server(home: Path):
    """A `BUSY_WHILE_TOLD` server (by its home) refusing audio as busy, until the block ends."""
    busy = home / "busy"
    busy.touch()
    try:
        yield
    finally:
        busy.unlink()


@dataclass
class BusyHit:
    """The hit of a search for the busy server's one sound: its player, its *Play hit* and the notes below it."""

    hit: object
    audio: object
    play: object

    @classmethod
    def opened(cls, driver, address: str) -> BusyHit:
        from selenium.webdriver.common.by import By

        driver.get(f"{address}/?q=a+low+hum&k=1")
        hit = wait_for(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "li.hit"), "search results")[0]
        audio = hit.find_element(By.CSS_SELECTOR, "audio.player")
        return cls(hit, audio, hit.find_element(By.CSS_SELECTOR, "button.play-hit"))

    def notes(self) -> list[str]:
        from selenium.webdriver.common.by import By

        return [note.text for note in self.hit.find_elements(By.CSS_SELECTOR, ".unplayable")]

    def plays_by_itself(self, driver) -> None:
        """It plays, with no press, once the server gives the audio; paused then."""
        wait_for(driver, lambda d: audio_state(d, self.audio)["t"] > 0.1, "the hit playing by itself")
        assert audio_state(driver, self.audio)["error"] is None
        driver.execute_script("arguments[0].pause()", self.audio)


def test_a_player_pressed_again_after_its_retries_ran_out_asks_again_while_the_server_is_busy(busy_when_told, driver):
    """A player refused as busy asks again BUSY_RETRIES (3) times, then says why without trying again. Pressed again
    later, while the server is still busy, it asks again by itself as at the first press (it did not: the count
    ran on until something played), and plays once the server gives the audio."""

    address, _hum, home = busy_when_told
    with busy_server(home):
        hit = BusyHit.opened(driver, address)
        hit.play.click()
        wait_for(driver, lambda d: hit.notes() == [BUSY_NOTE], "the retries run out")
        hit.play.click()
        wait_for(driver, lambda d: hit.notes() == [f"{BUSY_NOTE}; trying again in 1 s"], "asking again")
    hit.plays_by_itself(driver)


# The player's play() refuses its `refused`-th call before anything starts, as a browser that plays only on a press
# refuses a play the page asks for by itself (Firefox or Safari blocking autoplay; this Chromium is told to allow it).
REFUSE_A_PLAY = """
const [audio, refused] = arguments, play = HTMLMediaElement.prototype.play;
let calls = 0;
audio.play = function () {
  calls += 1;
  if (calls !== refused) return play.call(this);
  return Promise.reject(new DOMException("play() can only be initiated by a user gesture.", "NotAllowedError"));
};
"""


def test_a_player_whose_play_by_itself_is_refused_says_so_and_a_press_asks_again_as_the_first(busy_when_told, driver):
    """Refused as busy, a player asks again by itself; if the browser refuses that play before it starts (no "play"
    event), the note no longer says it is trying again but to press Play, and a press then counts as one: asked again
    as often as at the first. The flag that told its own play from a press stayed set: the note said it was trying
    again, and the press after the last retry was refused without asking again."""

    address, _hum, home = busy_when_told
    not_started = "The audio cannot be played: the browser did not let it start by itself; press Play to try again"
    with busy_server(home):
        hit = BusyHit.opened(driver, address)
        driver.execute_script(REFUSE_A_PLAY, hit.audio, 4)  # the press's play, then the retries': the last refused
        hit.play.click()
        wait_for(driver, lambda d: hit.notes() == [not_started], "the refused play said")
        hit.play.click()
        wait_for(driver, lambda d: hit.notes() == [f"{BUSY_NOTE}; trying again in 1 s"], "asking again")
    hit.plays_by_itself(driver)


def spectrograms_asked(home: Path) -> int:
    asked = home / "spectrograms-asked"
    return len(asked.read_text().splitlines()) if asked.exists() else 0


def test_a_spectrogram_refused_as_busy_is_asked_for_again_and_one_refused_for_good_is_not(busy_when_told, driver):
    """Refused twice as busy (the image, and the page's look at why), the spectrogram is asked for once more, when
    the server says to, and shows; its file gone from disk (404), it is asked for once, and looked at once, not
    three times more (a retry cannot mend it)."""
    from selenium.webdriver.common.by import By

    address, _hum, home = busy_when_told
    file_id = top_hit(address, "a low hum")["file_id"]
    (home / "spectrogram-refusals").write_text("2")
    before = spectrograms_asked(home)
    driver.get(f"{address}/files/{file_id}")
    image = driver.find_element(By.CSS_SELECTOR, "img.spectrogram")
    wait_for(driver, lambda d: d.execute_script("return arguments[0].naturalWidth", image) > 0, "the spectrogram")
    assert spectrograms_asked(home) - before == 3

    gone = home / "spectrogram-gone"
    gone.touch()
    try:
        before = spectrograms_asked(home)
        driver.get(f"{address}/files/{file_id}")
        wait_for(driver, lambda d: spectrograms_asked(home) - before == 2, "the spectrogram and the look at why")
        driver.execute_async_script("setTimeout(arguments[0], 1500)")  # past the second a retry would wait
        assert spectrograms_asked(home) - before == 2
    finally:
        gone.unlink()
