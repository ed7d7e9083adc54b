// The upload page's forms: a clip dropped on them, and a file past the server's limit refused before it is sent.

// A file past the server's limit (each file box's data-max-bytes) is refused before it is sent: the server would
// read it all only to refuse it with 413, on a page of its own, the form's other boxes lost. Said as the server
// says a refused upload (in #form-error, where the results go), the box marked and focused; the page stays as it is.
export function setUpUploadLimits() {
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
export function setUpDrops() {
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
