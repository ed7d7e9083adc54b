// Playing a span of a player (a hit, a window of a file), one player at a time, and a player that failed loaded anew
// only when it is played again.

// Play `audio` from where it is. play()'s promise is given back with a handler already: a refusal (the browser's
// autoplay rules) or a failure (said by the player's error event) is no error of the page's unless a caller says so.
export function play(audio) {
  const played = audio.play();
  played?.catch(() => {});
  return played;
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

export function setUpOnePlayerAtATime() {
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

// Play `audio` from `start` and stop at `end` (seconds on the audio element's own time line); play()'s promise.
export function playSpan(audio, start, end) {
  giveSourceBack(audio);
  audio.dataset.stopAt = String(end);
  audio.currentTime = start;
  const played = play(audio);
  audio.addEventListener("playing", () => {
    if (audio.currentTime + 0.05 < start) audio.currentTime = start;
  }, { once: true });
  return played;
}

// *Play hit* (and Enter or Space on the hit's waveform) plays and pauses the hit, as a media player's button does:
// while the hit plays it pauses it, and pressed again it goes on from there; once the hit has played to its end, or
// the player was moved away from it (by its own controls), it plays the hit from its start.
export function toggleSpan(audio, start, end) {
  if (!audio.paused) {
    audio.pause();
    return;
  }
  const at = audio.currentTime;
  playSpan(audio, at >= start && at < end ? at : start, end);
}

// A player that failed keeps its error, and plays nothing when pressed again (by *Play hit*, or by its own play
// button, whose presses the page cannot hear), even once the server is back or the file restored. Loaded anew, Chromium
// asks the server again at once whatever its `preload` says: failing again, in a loop (hundreds of requests a second,
// for as long as the page is open); without a source, its own play button does nothing. So it is given a stand-in
// source that asks the server nothing (a silent instant, in the page), and its own source back when it is pressed (its
// "play"), or played by the page (`giveSourceBack`, before it is told where to play from).
const STAND_IN = "data:audio/wav;base64,UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAIA+AAACABAAZGF0YQIAAAAAAA==";

export function loadAgainAfterFailure(audio) {
  audio.addEventListener("error", () => {
    if (audio.dataset.src) return; // the stand-in failed: never so, but it must not loop either
    audio.dataset.src = audio.getAttribute("src");
    audio.src = STAND_IN;
  });
  audio.addEventListener("play", () => {
    if (giveSourceBack(audio)) play(audio);
  });
}

// Give a failed player its own source back (`loadAgainAfterFailure`); true if it had the stand-in.
export function giveSourceBack(audio) {
  if (!audio.dataset.src) return false;
  audio.src = audio.dataset.src;
  delete audio.dataset.src;
  return true;
}

// A player told where to stop (its data-stop-at, by `playSpan`) pauses there, unless moved past it meanwhile.
export function stopAtEnd(audio) {
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
