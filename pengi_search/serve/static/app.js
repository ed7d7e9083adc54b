"use strict";
// Waveforms, hit players and the file timeline. Everything comes from data-* attributes and JSON answers;
// nothing is ever written as HTML (what the model wrote is untrusted text).

function drawPeaks(canvas, peaks) {
  const ctx = canvas.getContext("2d");
  const width = canvas.width, height = canvas.height, middle = height / 2;
  const loudest = Math.max(1e-6, ...peaks.map(([low, high]) => Math.max(-low, high)));
  const step = width / peaks.length;
  ctx.clearRect(0, 0, width, height);
  ctx.fillStyle = getComputedStyle(canvas).color;
  peaks.forEach(([low, high], i) => {
    const top = middle - (Math.max(high, 0) / loudest) * middle;
    const bottom = middle - (Math.min(low, 0) / loudest) * middle;
    ctx.fillRect(i * step, top, Math.max(step - 1, 1), Math.max(bottom - top, 1));
  });
}

// A server busy with other audio work answers 503 with when to ask again (Retry-After, in seconds): a waveform and a
// player ask again then by themselves, BUSY_RETRIES times at most in a row.
const BUSY_RETRIES = 3;

function retryAfter(response) {
  const seconds = response.status === 503 ? parseFloat(response.headers.get("Retry-After")) : NaN;
  return Number.isFinite(seconds) ? seconds : null;
}

async function loadWaveform(canvas, retries = 0) {
  try {
    const response = await fetch(canvas.dataset.peaks, { credentials: "same-origin" });
    const wait = retryAfter(response);
    if (wait !== null && retries < BUSY_RETRIES) {
      setTimeout(() => loadWaveform(canvas, retries + 1), wait * 1000);
      return;
    }
    if (!response.ok) {
      canvas.classList.add("unavailable");
      canvas.title = (await response.json()).detail || "no waveform";
      return;
    }
    drawPeaks(canvas, (await response.json()).peaks);
  } catch (error) {
    canvas.classList.add("unavailable");
  }
}

// A hit's waveform is asked for only once it comes within a screen's height of the viewport: a long list (a reload
// of `pages=N` shows up to a thousand hits) would otherwise send a request for every hit at once. A browser without
// IntersectionObserver asks for them all, as pages did before.
const waveformsInSight = window.IntersectionObserver
  ? new IntersectionObserver(loadInSight, { rootMargin: "100% 0px" })
  : null;

function loadInSight(entries, observer) {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    observer.unobserve(entry.target); // asked for once: scrolling back does not ask again
    loadWaveform(entry.target);
  }
}

function loadWaveformWhenNear(canvas) {
  if (waveformsInSight) waveformsInSight.observe(canvas);
  else loadWaveform(canvas);
}

function pauseOthers(current) {
  for (const audio of document.querySelectorAll("audio")) {
    if (audio !== current && !audio.paused) audio.pause();
  }
}

// One player at a time, in every tab of this server: a player that starts (by *Play hit*, a window, or its own
// button) pauses the page's others, and tells the pages of the other tabs, which pause theirs. A BroadcastChannel
// reaches the pages of one origin only (this server's); it is closed while the page is hidden away in the browser's
// back/forward cache (where nothing plays), which may not keep a page that holds one open.
const PLAYERS_CHANNEL = "pengi-search-players";

function setUpOnePlayerAtATime() {
  let channel = null;
  const open = () => {
    channel = new BroadcastChannel(PLAYERS_CHANNEL);
    channel.addEventListener("message", () => pauseOthers(null));
  };
  if (window.BroadcastChannel) {
    open();
    window.addEventListener("pagehide", () => channel.close());
    window.addEventListener("pageshow", (event) => event.persisted && open());
  }
  document.addEventListener("play", (event) => { // "play" does not bubble: heard on its way down
    pauseOthers(event.target);
    channel?.postMessage("playing");
  }, true);
}

// Play `audio` from `start` and stop at `end` (seconds on the audio element's own time line).
function playSpan(audio, start, end) {
  giveSourceBack(audio);
  audio.dataset.stopAt = String(end);
  audio.currentTime = start;
  const played = audio.play();
  if (played) played.catch(() => {});
  audio.addEventListener("playing", () => {
    if (audio.currentTime + 0.05 < start) audio.currentTime = start;
  }, { once: true });
}

// *Play hit* (and Enter or Space on the hit's waveform) plays and pauses the hit, as a media player's button does:
// while the hit plays it pauses it, and pressed again it goes on from there; once the hit has played to its end, or
// the player was moved away from it (by its own controls), it plays the hit from its start.
function toggleSpan(audio, start, end) {
  if (!audio.paused) {
    audio.pause();
    return;
  }
  const at = audio.currentTime;
  playSpan(audio, at >= start && at < end ? at : start, end);
}

// The button says what pressing it does (play or pause), whatever started or stopped the player: the button, the
// waveform, the player's own controls, another player starting, the hit's end, a failure.
const TOGGLE_LABELS = { play: ["\u25b6 ", "Play hit"], pause: ["\u275a\u275a ", "Pause hit"] };

// So does the hit's waveform, to a screen reader (its aria-label: "Pause dog.wav, 0 to 3 s: a dog barks"), pressed
// as it is by Enter, Space or a click of assistive technology (a click with no pointer: see setUpHits).
function labelWithPlayer(button, audio, canvas) {
  const [icon, label] = button.querySelectorAll("span");
  const show = () => {
    const state = audio.paused ? "play" : "pause";
    [icon.textContent, label.textContent] = TOGGLE_LABELS[state];
    canvas?.setAttribute("aria-label", `${state === "play" ? "Play" : "Pause"} ${canvas.dataset.said}`);
  };
  for (const type of ["play", "pause", "emptied", "error"]) audio.addEventListener(type, show);
}

// A player that failed keeps its error, and plays nothing when pressed again (by *Play hit*, or by its own play
// button, whose presses the page cannot hear), even once the server is back or the file restored. Loaded anew, Chromium
// asks the server again at once whatever its `preload` says: failing again, in a loop (hundreds of requests a second,
// for as long as the page is open); without a source, its own play button does nothing. So it is given a stand-in
// source that asks the server nothing (a silent instant, in the page), and its own source back when it is pressed (its
// "play"), or played by the page (`giveSourceBack`, before it is told where to play from).
const STAND_IN = "data:audio/wav;base64,UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQIAAAAAAA==";

function loadAgainAfterFailure(audio) {
  audio.addEventListener("error", () => {
    if (audio.dataset.src) return; // the stand-in failed: never so, but it must not loop either
    audio.dataset.src = audio.getAttribute("src");
    audio.src = STAND_IN;
  });
  audio.addEventListener("play", () => {
    if (!giveSourceBack(audio)) return;
    const played = audio.play();
    if (played) played.catch(() => {});
  });
}

// Give a failed player its own source back (`loadAgainAfterFailure`); true if it had the stand-in.
function giveSourceBack(audio) {
  if (!audio.dataset.src) return false;
  audio.src = audio.dataset.src;
  delete audio.dataset.src;
  return true;
}

// A player that fails after the page was made (its file gone or changed on disk since, the server stopped or
// restarting) would do nothing visible: it says why below itself, as a page made then says it of such a hit, until
// it plays again. One refused because the server was busy (503) asks again by itself when the server says to (its
// Retry-After), and plays from where it was asked to play, if it was (a file page's player only loads its length):
// BUSY_RETRIES times at most after each press of Play, so that a press once the server is less busy is served.
const playFailures = new WeakMap(); // audio -> the note that says why it did not play

function sayWhyNotPlayed(audio) {
  let asked = null; // where the player was asked to play from since it last played or failed, else null
  let retries = 0; // busy refusals asked again since the player was last pressed or played
  let retry = 0; // the timer of the asking again to come, else 0
  let retrying = false; // the player plays by itself (asking again): its "play" is no press
  let failures = 0; // since it last played: the reason of a failure is said only if it is still the latest
  audio.addEventListener("play", () => {
    asked = audio.currentTime;
    if (retrying) {
      retrying = false;
      return;
    }
    clearTimeout(retry); // pressed: asked for now, and asked again as often as at the first press
    retries = 0;
  });
  audio.addEventListener("error", async () => {
    const from = asked, stopAt = parseFloat(audio.dataset.stopAt), failure = ++failures;
    asked = null;
    const why = await whyNotPlayed(audio.getAttribute("src"));
    if (failure !== failures) return; // it played, or failed again, meanwhile
    // Given now, the audio may have been refused as busy a moment before: asked again once, before it is said
    // that the browser cannot decode it.
    const wait = retries < BUSY_RETRIES ? (why.given && retries === 0 ? 0 : why.retryAfter) : null;
    if (wait === null) sayNotPlayed(audio, why.reason);
    else if (wait > 0) sayNotPlayed(audio, `${why.reason}; trying again in ${wait} s`);
    if (wait === null) return;
    retries++;
    retry = setTimeout(() => {
      if (from === null) {
        giveSourceBack(audio); // loaded as the page loads it: no "play"
      } else {
        retrying = true;
        playSpan(audio, from, Number.isNaN(stopAt) ? Infinity : stopAt);
      }
    }, wait * 1000);
  });
  audio.addEventListener("playing", () => {
    clearTimeout(retry);
    retries = failures = 0;
    playFailures.get(audio)?.remove();
    playFailures.delete(audio);
  });
}

function sayNotPlayed(audio, reason) {
  let note = playFailures.get(audio);
  if (!note) {
    note = document.createElement("p");
    note.className = "error unplayable";
    note.setAttribute("role", "alert");
    (audio.closest(".listen") || audio).after(note);
    playFailures.set(audio, note);
  }
  note.textContent = `The audio cannot be played: ${reason}`;
}

// Why the server did not give the audio at `src` ({reason, retryAfter}), as its JSON error says it ("file 12: no
// longer readable on disk", "window 7: no longer in the index: ...": the page names the file and its window already,
// so not their ids), with when to ask again (seconds) if it was busy, else null; or that it did not answer, or gave
// what the browser cannot play.
async function whyNotPlayed(src) {
  let response;
  try {
    response = await fetch(new URL(src, location.href).pathname, { headers: { Range: "bytes=0-0" }, credentials: "same-origin" });
  } catch (error) {
    return { reason: "the server does not answer", retryAfter: null };
  }
  if (response.ok) {
    response.body?.cancel();
    return { reason: "the browser cannot decode it", retryAfter: null, given: true };
  }
  const detail = (await response.json().catch(() => ({}))).detail;
  const reason = detail ? detail.replace(/^((file|window) \d+|audio): /, "") : `the server answered ${response.status}`;
  return { reason, retryAfter: retryAfter(response) };
}

function stopAtEnd(audio) {
  audio.addEventListener("timeupdate", () => {
    const stopAt = parseFloat(audio.dataset.stopAt);
    if (!Number.isNaN(stopAt) && audio.currentTime >= stopAt) {
      audio.pause();
      delete audio.dataset.stopAt;
    }
  });
  audio.addEventListener("seeking", () => {
    const stopAt = parseFloat(audio.dataset.stopAt);
    if (!Number.isNaN(stopAt) && audio.currentTime > stopAt) delete audio.dataset.stopAt;
  });
}

// Windows side by side (a file's timeline, its list of windows, the hits' waveforms) are one stop of the Tab key:
// the arrow keys move between them (Home and End: to the first and the last), Enter or Space plays the one in
// focus. Tab comes back to the one last focused (a roving tabindex: it alone has tabindex 0, see tabStop).
// `added`: the items of `items` to set up (those a page of further results added; by default all).
function keyboardWindows(items, play, added = items) {
  for (const item of added) {
    item.addEventListener("focus", () => tabStop(items, item));
    item.addEventListener("keydown", (event) => {
      if (event.target !== item) return; // a key on a link inside the item is the link's
      const i = items.indexOf(item), last = items.length - 1;
      const moves = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: last };
      const to = moves[event.key];
      if (event.key === "Enter" || event.key === " ") play(item);
      else if (to !== undefined) items[Math.max(0, Math.min(last, to))].focus();
      else return;
      event.preventDefault();
    });
  }
}

// Make `chosen` the one of `items` that the Tab key reaches.
function tabStop(items, chosen) {
  for (const item of items) item.tabIndex = item === chosen ? 0 : -1;
}

const playsHit = new WeakMap(); // waveform -> what pressing it plays

// A hit is one stop of the Tab key, at first its link to the file: the Tab key goes from hit to hit, not through
// every control of each. The arrow keys move among them: Left and Right to the hit's other controls (Play hit, the
// waveform, the player, More like this), Up and Down to the same control of the hit above or below (Home and End:
// of the first and the last hit); Enter or Space on a waveform plays its hit. Tab comes back to the control of a
// hit last focused (a roving tabindex per hit, see tabStop).
const HIT_CONTROLS = ["a.path", "button.play-hit", "canvas.waveform", "audio.player", "a.more"];
const hitRows = []; // the controls of each of the page's hits, in the list's order

// Set up the keyboard of `hits` (the page's, or a page of further results added below them).
function keyboardHits(hits) {
  for (const hit of hits) {
    const row = Array.from(hit.querySelectorAll(HIT_CONTROLS.join(", ")));
    if (!row.length) continue;
    tabStop(row, row[0]);
    hitRows.push(row);
    for (const control of row) {
      control.addEventListener("focus", () => tabStop(row, control));
      control.addEventListener("keydown", (event) => moveAmongHits(event, row, control));
    }
  }
  const keys = document.getElementById("hits-keys"); // how, said to screen readers once the keys do it
  if (keys && hitRows.length) {
    keys.hidden = false;
    document.querySelector("ol.hits").setAttribute("aria-describedby", keys.id);
  }
}

function moveAmongHits(event, row, control) {
  // A key the player used (its seek bar, its volume), or one with a modifier, is left to it and to the browser.
  if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey || event.shiftKey) return;
  const at = hitRows.indexOf(row), last = hitRows.length - 1, column = row.indexOf(control);
  const rows = { ArrowUp: at - 1, ArrowDown: at + 1, Home: 0, End: last };
  let to;
  if (event.key === "ArrowLeft") to = row[Math.max(0, column - 1)];
  else if (event.key === "ArrowRight") to = row[Math.min(row.length - 1, column + 1)];
  else if (event.key in rows) {
    const other = hitRows[Math.max(0, Math.min(last, rows[event.key]))];
    const kind = HIT_CONTROLS.find((selector) => control.matches(selector));
    to = other.find((item) => item.matches(kind)) ?? other[0]; // a hit that cannot be played has no waveform
  } else if ((event.key === "Enter" || event.key === " ") && playsHit.has(control)) playsHit.get(control)();
  else return;
  event.preventDefault();
  to?.focus();
}

// Set up `hits` (the page's, or a page of further results added to it).
function setUpHits(hits) {
  for (const hit of hits) {
    const audio = hit.querySelector("audio.player");
    const button = hit.querySelector("button.play-hit");
    const canvas = hit.querySelector("canvas.waveform");
    if (!audio || !button) continue;
    stopAtEnd(audio);
    sayWhyNotPlayed(audio);
    loadAgainAfterFailure(audio);
    const start = parseFloat(button.dataset.start), end = parseFloat(button.dataset.end);
    button.addEventListener("click", () => toggleSpan(audio, start, end));
    labelWithPlayer(button, audio, canvas);
    if (canvas) {
      loadWaveformWhenNear(canvas);
      canvas.addEventListener("click", (event) => {
        if (event.detail === 0) { // no pointer (a screen reader's click): no place was chosen, it plays or pauses
          toggleSpan(audio, start, end);
          return;
        }
        const fraction = event.offsetX / canvas.clientWidth;
        playSpan(audio, start + fraction * (end - start), end);
      });
      playsHit.set(canvas, () => toggleSpan(audio, start, end));
    }
  }
  keyboardHits(hits);
}

// "More results" adds the next page of results to the list, as the server makes it (the page of those results
// alone: `data-next`); the address then says the page shows one page more (the link's own address, less the scroll
// to the first added hit), so that reloading it or coming back to it shows them all. The focus goes to the first
// added hit, where a keyboard user goes on. Without scripts, the link opens that longer page.
function setUpMoreResults() {
  const more = document.querySelector("a.more-results");
  if (!more) return;
  const label = more.textContent;
  more.addEventListener("click", async (event) => {
    event.preventDefault();
    if (more.getAttribute("aria-disabled") === "true") return; // the page is on its way
    more.setAttribute("aria-disabled", "true");
    more.textContent = more.dataset.busy;
    try {
      addResults(more, await fetchPage(more.dataset.next));
    } catch (error) {
      sayBelow(more.parentElement, "more-error", `The next results did not come: ${error.message}`);
    } finally {
      more.removeAttribute("aria-disabled");
      more.textContent = label;
    }
  });
}

function addResults(more, page) {
  const hits = Array.from(page.querySelectorAll("ol.hits > li.hit"), (hit) => document.adoptNode(hit));
  document.querySelector("ol.hits").append(...hits);
  setUpHits(hits);
  const longer = new URL(more.href);
  history.replaceState(history.state, "", longer.pathname + longer.search);
  document.getElementById("more-error")?.remove();
  const next = page.querySelector("a.more-results");
  if (next) {
    longer.searchParams.set("pages", String(Number(longer.searchParams.get("pages")) + 1));
    longer.hash = new URL(next.getAttribute("href"), location.href).hash; // the first hit it will add
    more.href = longer.href;
    more.dataset.next = next.dataset.next;
  } else if (hits.length) {
    more.parentElement.remove(); // every result is shown
  } else {
    more.parentElement.replaceWith(document.adoptNode(page.querySelector(".empty"))); // "No more results."
  }
  hits[0]?.querySelector("a.path")?.focus();
}

// The page at `address`, as a document to take parts of (never shown itself); refused, an error with its reason.
async function fetchPage(address) {
  let response;
  try {
    response = await fetch(address, { credentials: "same-origin" });
  } catch (error) {
    throw new Error("the server does not answer");
  }
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  if (response.ok) return page;
  throw new Error(page.querySelector(".error")?.textContent.trim() || `the server answered ${response.status}`);
}

// Say `text` (an alert, of id `id`) below `element`, in place of what was said there before.
function sayBelow(element, id, text) {
  let note = document.getElementById(id);
  if (!note) {
    note = document.createElement("p");
    note.className = "error";
    note.id = id;
    note.setAttribute("role", "alert");
    element.after(note);
  }
  note.textContent = text;
}

// A spectrogram refused while the server is busy (503) is asked for again when the server says to (its
// Retry-After), BUSY_RETRIES times at most; one refused otherwise (its file gone from disk, the server failing) is
// not, as asking again would not mend it. An image does not say why it failed: the server is asked once more, by
// `fetch`, whose answer does.
function retryImage(image) {
  let retries = 0;
  let asking = false; // a look at why it failed, or the wait after it, is under way
  const askAgain = async () => {
    if (asking || retries >= BUSY_RETRIES) return; // its error event heard as well as seen below: one failure
    asking = true;
    retries++;
    const wait = await whenToAskAgain(image.getAttribute("src"));
    if (wait === null) return; // refused for good: nothing more to ask
    setTimeout(() => {
      asking = false;
      image.src = image.getAttribute("src");
    }, wait * 1000);
  };
  image.addEventListener("error", askAgain);
  // Refused before this script ran, its error event already gone by (or still to come): asked for again all the same.
  if (image.complete && image.naturalWidth === 0) askAgain();
}

// In how many seconds to ask for `src` again: 0 if the server gives it now, when it says to if it is busy, else
// null (refused for good, or no answer).
async function whenToAskAgain(src) {
  try {
    const response = await fetch(src, { credentials: "same-origin" });
    response.body?.cancel();
    return response.ok ? 0 : retryAfter(response);
  } catch (error) {
    return null;
  }
}

function setUpFile() {
  const player = document.getElementById("file-player");
  if (!player) return;
  const spectrogram = document.querySelector("img.spectrogram");
  if (spectrogram) retryImage(spectrogram);
  stopAtEnd(player);
  sayWhyNotPlayed(player);
  loadAgainAfterFailure(player);
  const windows = Array.from(document.querySelectorAll("li.window[data-start]"));
  const timeline = document.querySelector(".timeline");
  const box = document.querySelector(".spectrogram-box");
  const playhead = document.querySelector(".playhead");
  const lanes = timeline ? Array.from(timeline.querySelectorAll(".lane")) : [];
  const duration = timeline ? parseFloat(timeline.dataset.duration) : 0;
  if (timeline && duration > 0) {
    for (const lane of lanes) {
      const start = parseFloat(lane.dataset.start), end = parseFloat(lane.dataset.end);
      lane.style.left = `${(100 * start) / duration}%`;
      lane.style.width = `${(100 * (end - start)) / duration}%`;
      lane.addEventListener("click", () => seekTo(start));
    }
    keyboardWindows(lanes, (lane) => seekTo(parseFloat(lane.dataset.start)));
  }
  function seekTo(start) {
    giveSourceBack(player);
    delete player.dataset.stopAt;
    player.currentTime = start;
    const played = player.play();
    if (played) played.catch(() => {});
  }
  for (const item of windows) {
    const start = parseFloat(item.dataset.start);
    item.addEventListener("click", (event) => {
      if (event.target.closest("a")) return;
      seekTo(start);
    });
  }
  keyboardWindows(windows, (item) => seekTo(parseFloat(item.dataset.start)));
  player.addEventListener("timeupdate", () => {
    const now = player.currentTime;
    let active = null;
    for (const item of windows) {
      if (parseFloat(item.dataset.start) <= now + 1e-3) active = item;
    }
    for (const item of windows) item.classList.toggle("active", item === active);
    lanes.forEach((lane, i) => lane.classList.toggle("active", windows[i] === active));
    if (box && playhead) {
      const shown = parseFloat(box.dataset.shown);
      playhead.style.left = `${Math.min(100, (100 * now) / Math.max(shown, 1e-6))}%`;
    }
  });
  const target = location.hash && document.getElementById(location.hash.slice(1));
  const at = windows.indexOf(target);
  if (at >= 0) {
    // The window the address names (a hit's link) is the one marked, and the one Tab reaches, in the list and on
    // the timeline (its lane): a keyboard user goes on from it, not from the file's first window.
    target.classList.add("active");
    tabStop(windows, target);
    if (lanes[at]) tabStop(lanes, lanes[at]);
    target.scrollIntoView({ block: "center" });
    player.currentTime = parseFloat(target.dataset.start);
  }
}

// A form that takes a while (a search, a clip described by the model): say so, and keep it from being sent twice.
// A search (a form sent by GET) may be sent again changed while it is on its way, as a user who thinks better of a
// slow search types another and presses Enter: the browser drops the first for it. So its button is not disabled,
// which would make Enter in its boxes do nothing (HTML's implicit submission needs an enabled default button); only
// the same search again is not sent. An upload's is, as nothing but the same clip would be sent twice.
// It is ready again whenever the page stays without the answer: the sending was stopped (the browser's stop button
// or Esc; a connection that failed), which the Navigation API reports as a failed navigation, or the page is shown
// again as it was left, from the browser's back/forward cache (pageshow).
function setUpBusyForms() {
  const readyAgain = [];
  for (const form of document.querySelectorAll("form")) {
    const button = form.querySelector("button[data-busy]");
    if (!button) continue;
    const label = button.textContent;
    const changeable = form.method === "get";
    let sending = null; // what is on its way (a search's address; true for an upload), else null
    let starting = false; // a sending begun in this task: the navigation it aborts fails, and is no stop of it
    const show = (busy) => {
      button.disabled = busy && !changeable;
      button.textContent = busy ? button.dataset.busy : label;
      if (busy) form.setAttribute("aria-busy", "true");
      else form.removeAttribute("aria-busy");
    };
    form.addEventListener("submit", (event) => {
      if (event.defaultPrevented) return; // refused before sending (setUpUploadLimits)
      const sent = changeable ? new URLSearchParams(new FormData(form)).toString() : true;
      if (sending !== null && (!changeable || sent === sending)) {
        event.preventDefault(); // the same, on its way already
        return;
      }
      sending = sent;
      starting = true;
      // After this event, so that the submission itself is not stopped by the disabled button; and only if the
      // sending was not stopped meanwhile.
      setTimeout(() => {
        starting = false;
        show(sending !== null);
      });
    });
    readyAgain.push(() => {
      if (starting) return;
      sending = null;
      show(false);
    });
  }
  const ready = () => readyAgain.forEach((makeReady) => makeReady());
  window.addEventListener("pageshow", ready);
  if (window.navigation) window.navigation.addEventListener("navigateerror", ready);
}

// A search's address holds only what was set, to be read and shared: a box left empty, or at its default (its
// data-default), is not sent (disabled while the form's data is taken, enabled again at once), and the server takes
// a box left out as its default.
function setUpShortAddresses() {
  for (const form of document.querySelectorAll("form[method=get]")) {
    form.addEventListener("submit", (event) => {
      if (event.defaultPrevented) return;
      const unset = Array.from(form.elements).filter(
        (box) => box.name && !box.disabled && box.type !== "hidden" && [box.dataset.default, ""].includes(box.value),
      );
      for (const box of unset) box.disabled = true;
      setTimeout(() => unset.forEach((box) => (box.disabled = false)));
    });
  }
}

// A file past the server's limit (each file box's data-max-bytes) is refused before it is sent: the server would
// read it all only to refuse it with 413, on a page of its own, the form's other boxes lost. Said as the server
// says a refused upload (in #form-error, where the results go), the box marked and focused; the page stays as it is.
function setUpUploadLimits() {
  for (const form of document.querySelectorAll("form.upload")) {
    const boxes = Array.from(form.querySelectorAll("input[type=file][data-max-bytes]"));
    form.addEventListener("submit", (event) => {
      const over = boxes.find((box) => box.files.length > 0 && box.files[0].size > Number(box.dataset.maxBytes));
      if (!over) return;
      event.preventDefault();
      refuse(over, `${over.files[0].name}: ${over.dataset.tooLarge}`);
    });
    for (const box of boxes) {
      box.addEventListener("change", () => {
        if (box.getAttribute("aria-invalid") !== "true") return;
        unmark(box);
        document.getElementById("form-error")?.remove();
      });
    }
  }
}

// The upload page is named for it: a clip dropped on one of its forms is that form's clip, or goes to the file box it
// was dropped on (only the small file boxes take a drop otherwise); a file dropped elsewhere on the page is not
// opened by the browser in the page's place, the forms' boxes lost.
function setUpDrops() {
  const forms = document.querySelectorAll("form.upload");
  if (!forms.length) return;
  const holdsFiles = (event) => event.dataTransfer && Array.from(event.dataTransfer.types).includes("Files");
  for (const type of ["dragover", "drop"]) {
    document.addEventListener(type, (event) => {
      if (holdsFiles(event)) event.preventDefault();
    });
  }
  for (const form of forms) {
    form.addEventListener("drop", (event) => {
      if (!holdsFiles(event) || !event.dataTransfer.files.length) return;
      const box = event.target.closest("input[type=file]") || form.querySelector("input[type=file][name=file]");
      const first = new DataTransfer(); // the box takes one file
      first.items.add(event.dataTransfer.files[0]);
      box.files = first.files;
      box.dispatchEvent(new Event("change", { bubbles: true }));
    });
  }
}

// Say why `box` was refused, as a refused form's page does: the reason in place of the results, the box marked
// invalid, described by it, and focused.
function refuse(box, reason) {
  const result = document.getElementById("result");
  for (const old of result.querySelectorAll("section.result")) old.remove(); // they answered an earlier sending
  for (const marked of document.querySelectorAll("[aria-invalid=true]")) unmark(marked);
  let error = document.getElementById("form-error");
  if (!error) {
    error = document.createElement("p");
    error.className = "error";
    error.id = "form-error";
    error.setAttribute("role", "alert");
    result.prepend(error);
  }
  error.textContent = reason;
  box.setAttribute("aria-invalid", "true");
  box.setAttribute("aria-describedby", "form-error");
  box.focus();
}

function unmark(box) {
  box.removeAttribute("aria-invalid");
  box.removeAttribute("aria-describedby");
}

// A refused form's box at fault (marked invalid, with autofocus) takes the focus also where the page's address names
// a part of it (the upload page's answers: #result): browsers then skip autofocus, and take the focus away once they
// have scrolled there. Hence on load, after that, unless the user has already moved the focus somewhere.
function focusBoxAtFault() {
  const box = document.querySelector("[aria-invalid=true][autofocus]");
  if (box && document.activeElement === document.body) box.focus();
}

window.addEventListener("load", focusBoxAtFault);
document.addEventListener("DOMContentLoaded", () => {
  setUpOnePlayerAtATime();
  setUpHits(document.querySelectorAll(".hit"));
  setUpMoreResults();
  setUpFile();
  setUpShortAddresses();
  setUpDrops();
  setUpUploadLimits(); // before setUpBusyForms: a form refused here is not sent, so never busy
  setUpBusyForms();
});
