// The search form's boxes: what its address holds.

// A search's address holds only what was set, to be read and shared: a box left empty, or at its default (its
// data-default), is not sent (disabled while the form's data is taken, enabled again at once), and the server takes
// a box left out as its default.
export function setUpShortAddresses() {
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
