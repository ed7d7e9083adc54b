// A server busy with other audio work answers 503 with when to ask again (Retry-After, in seconds): a waveform, a
// player and a spectrogram ask again then by themselves, BUSY_RETRIES times at most in a row.
export const BUSY_RETRIES = 3;

// When `response` says to ask again (seconds), if it refused as busy; else null.
export function retryAfter(response) {
  const seconds = response.status === 503 ? parseFloat(response.headers.get("Retry-After")) : NaN;
  return Number.isFinite(seconds) ? seconds : null;
}
