// Every form of the pages: one being sent says so, and one refused puts the focus in its box at fault.

// A form that takes a while (a search, a clip described by the model): say so, and keep it from being sent twice.
// A search (a form sent by GET) may be sent again changed while it is on its way, as a user who thinks better of a
// slow search types another and presses Enter: the browser drops the first for it. So its button is not disabled,
// which would make Enter in its boxes do nothing (HTML's implicit submission needs an enabled default button); only
// the same search again is not sent. An upload's is, as nothing but the same clip would be sent twice.
// It is ready again whenever the page stays without the answer: the sending was stopped (the browser's stop button
// or Esc; a connection that failed), which the Navigation API reports as a failed navigation, or the page is shown
// again as it was left, from the browser's back/forward cache (pageshow).
export function setUpBusyForms() {
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

// A refused form's box at fault (marked invalid, with autofocus) takes the focus also where the page's address names
// a part of it (the upload page's answers: #result): browsers then skip autofocus, and take the focus away once they
// have scrolled there. Hence on load, after that, unless the user has already moved the focus somewhere.
export function focusBoxAtFault() {
  const box = document.querySelector("[aria-invalid=true][autofocus]");
  if (box && document.activeElement === document.body) box.focus();
}
