// The search form's boxes: what its address holds, and the hybrid ranking's weight.

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

// The hybrid caption weight is read by the hybrid ranking alone, and the server refuses it with another (as the API
// and `query --hybrid-weight` do): its box is shown only while that ranking is chosen, and is not sent otherwise
// (disabled). A weight the server refused (its box marked invalid) stays in sight, to be corrected, until the ranking
// is changed. Without scripts the box is always shown, and the server says what is wrong.
export function setUpHybridWeight() {
  for (const form of document.querySelectorAll("form.search")) {
    const ranking = form.querySelector("select[name=rank]");
    const weight = form.querySelector("input[name=hybrid_weight]");
    if (!ranking || !weight) continue; // "more like this": no ranking to choose
    const show = (shown) => {
      weight.closest("label").hidden = !shown;
      weight.disabled = !shown;
    };
    show(ranking.value === "hybrid" || weight.getAttribute("aria-invalid") === "true");
    ranking.addEventListener("change", () => show(ranking.value === "hybrid"));
  }
}
