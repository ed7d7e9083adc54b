// Items side by side that are one stop of the Tab key (a roving tabindex: the one last focused alone has tabindex 0).

// Windows side by side (a file's timeline, its list of windows) are one stop of the Tab key: the arrow keys move
// between them (Home and End: to the first and the last), Enter or Space plays the one in focus (`play`). Tab comes
// back to the one last focused.
export function keyboardWindows(items, play) {
  for (const item of items) {
    item.addEventListener("focus", () => tabStop(items, item));
    item.addEventListener("keydown", (event) => {
      if (event.target !== item) return; // a key on a link inside the item is the link's
      const i = items.indexOf(item), last = items.length - 1;
      const moves = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: last };
      const to = moves[event.key];
      if (event.key === "Enter" || event.key === " ") play(item);
      else if (to !== undefined) items[Math.max(0, Math.min(last, to))].focus();
      else return;
      event.preventDefault();
    });
  }
}

// Make `chosen` the one of `items` that the Tab key reaches.
export function tabStop(items, chosen) {
  for (const item of items) item.tabIndex = item === chosen ? 0 : -1;
}
