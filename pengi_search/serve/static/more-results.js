// "More results" adds the next page of results to the list, as the server makes it (the page of those results
// alone: `data-next`); the address then says the page shows one page more (the link's own address, less the scroll
// to the first added hit), so that reloading it or coming back to it shows them all. The focus goes to the first
// added hit, where a keyboard user goes on. Without scripts, the link opens that longer page.
import { setUpHits } from "./hits.js";

export function setUpMoreResults() {
  const more = document.querySelector("a.more-results");
  if (!more) return;
  const label = more.textContent;
  more.addEventListener("click", async (event) => {
    event.preventDefault();
    if (more.getAttribute("aria-disabled") === "true") return; // the page is on its way
    more.setAttribute("aria-disabled", "true");
    more.textContent = more.dataset.busy;
    try {
      addResults(more, await fetchPage(more.dataset.next));
    } catch (error) {
      sayBelow(more.parentElement, "more-error", `The next results did not come: ${error.message}`);
    } finally {
      more.removeAttribute("aria-disabled");
      more.textContent = label;
    }
  });
}

function addResults(more, page) {
  const hits = Array.from(page.querySelectorAll("ol.hits > li.hit"), (hit) => document.adoptNode(hit));
  document.querySelector("ol.hits").append(...hits);
  setUpHits(hits);
  const longer = new URL(more.href);
  history.replaceState(history.state, "", longer.pathname + longer.search);
  document.getElementById("more-error")?.remove();
  const next = page.querySelector("a.more-results");
  if (next) {
    longer.searchParams.set("pages", String(Number(longer.searchParams.get("pages")) + 1));
    longer.hash = new URL(next.getAttribute("href"), location.href).hash; // the first hit it will add
    more.href = longer.href;
    more.dataset.next = next.dataset.next;
  } else if (hits.length) {
    more.parentElement.remove(); // every result is shown
  } else {
    more.parentElement.replaceWith(document.adoptNode(page.querySelector(".empty"))); // "No more results."
  }
  hits[0]?.querySelector("a.path")?.focus();
}

// The page at `address`, as a document to take parts of (never shown itself); refused, an error with its reason.
async function fetchPage(address) {
  let response;
  try {
    response = await fetch(address, { credentials: "same-origin" });
  } catch (error) {
    throw new Error("the server does not answer");
  }
  const page = new DOMParser().parseFromString(await response.text(), "text/html");
  if (response.ok) return page;
  throw new Error(page.querySelector(".error")?.textContent.trim() || `the server answered ${response.status}`);
}

// Say `text` (an alert, of id `id`) below `element`, in place of what was said there before.
function sayBelow(element, id, text) {
  let note = document.getElementById(id);
  if (!note) {
    note = document.createElement("p");
    note.className = "error";
    note.id = id;
    note.setAttribute("role", "alert");
    element.after(note);
  }
  note.textContent = text;
}
