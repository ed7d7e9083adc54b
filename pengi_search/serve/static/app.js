// The pages' script, an ES module: it sets up each part of a page from the modules beside it. Everything comes from
// data-* attributes and JSON answers; nothing is ever written as HTML (what the model wrote is untrusted text).
// A module runs once the page is parsed (as a deferred script), before DOMContentLoaded.
import { setUpFile } from "./file-page.js";
import { focusBoxAtFault, setUpBusyForms } from "./forms.js";
import { setUpHits } from "./hits.js";
import { setUpMoreResults } from "./more-results.js";
import { setUpOnePlayerAtATime } from "./player.js";
import { setUpHybridWeight, setUpShortAddresses } from "./search-form.js";
import { setUpDrops, setUpUploadLimits } from "./uploads.js";

window.addEventListener("load", focusBoxAtFault);
document.addEventListener("DOMContentLoaded", () => {
  setUpOnePlayerAtATime();
  setUpHits(document.querySelectorAll(".hit"));
  setUpMoreResults();
  setUpFile();
  setUpHybridWeight();
  setUpShortAddresses();
  setUpDrops();
  setUpUploadLimits(); // before setUpBusyForms: a form refused here is not sent, so never busy
  setUpBusyForms();
});
