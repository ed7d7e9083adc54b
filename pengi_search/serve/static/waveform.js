// A hit's waveform, drawn from the window's peaks (the server's JSON), asked for as it nears the screen.
import { BUSY_RETRIES, retryAfter } from "./busy.js";

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

export function loadWaveformWhenNear(canvas) {
  if (waveformsInSight) waveformsInSight.observe(canvas);
  else loadWaveform(canvas);
}
