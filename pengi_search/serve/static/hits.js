// A list of results (hits): each hit's *Play hit*, waveform and player, and the keyboard among hits.
import { tabStop } from "./keyboard.js";
import { loadAgainAfterFailure, playSpan, stopAtEnd, toggleSpan } from "./player.js";
import { sayWhyNotPlayed } from "./player-failures.js";
import { loadWaveformWhenNear } from "./waveform.js";

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
export function setUpHits(hits) {
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
