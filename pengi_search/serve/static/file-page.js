// A file's page: its player, its spectrogram with a playhead, and its windows (the timeline's lanes and the list),
// each of which plays the file from its start.
import { BUSY_RETRIES, retryAfter } from "./busy.js";
import { keyboardWindows, tabStop } from "./keyboard.js";
import { giveSourceBack, loadAgainAfterFailure, play, stopAtEnd } from "./player.js";
import { sayWhyNotPlayed } from "./player-failures.js";

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

export function setUpFile() {
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
    play(player);
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
