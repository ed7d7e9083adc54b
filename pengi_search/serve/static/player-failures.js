// A player that fails after the page was made (its file gone or changed on disk since, the server stopped or
// restarting) would do nothing visible: it says why below itself, as a page made then says it of such a hit, until
// it plays again. One refused because the server was busy (503) asks again by itself when the server says to (its
// Retry-After), and plays from where it was asked to play, if it was (a file page's player only loads its length):
// BUSY_RETRIES times at most after each press of Play, so that a press once the server is less busy is served.
import { BUSY_RETRIES, retryAfter } from "./busy.js";
import { giveSourceBack, playSpan } from "./player.js";

const playFailures = new WeakMap(); // audio -> the note that says why it did not play
// Said when the browser refuses a play the page asks for by itself (its autoplay rules may want a press for each).
const NOT_STARTED = "the browser did not let it start by itself; press Play to try again";

export function sayWhyNotPlayed(audio) {
  let asked = null; // where the player was asked to play from since it last played or failed, else null
  let retries = 0; // busy refusals asked again since the player was last pressed or played
  let retry = 0; // the timer of the asking again to come, else 0
  let retrying = false; // the player plays by itself (asking again), its "play" still to come: that one is no press
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
  const playAgain = (from, stopAt) => {
    retrying = true;
    playSpan(audio, from, Number.isNaN(stopAt) ? Infinity : stopAt)?.catch(() => {
      // Refused before its "play" (a browser that plays only on a press): no "play" is to come to clear the flag,
      // and the next press must count as one, asked again as often as at the first.
      if (!retrying) return; // it started, and failed since: its error event says why
      retrying = false;
      sayNotPlayed(audio, NOT_STARTED);
    });
  };
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
      if (from === null) giveSourceBack(audio); // loaded as the page loads it: no "play"
      else playAgain(from, stopAt);
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
