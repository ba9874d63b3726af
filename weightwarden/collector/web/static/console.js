// weightwarden console: small conveniences only; every page works without script.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // Keep the queue fresh while it is on screen, unless someone is typing in the filters.
  const queue = document.getElementById("queue");
  const filters = document.getElementById("filters");
  if (queue && filters) {
    let typing = false;
    filters.addEventListener("focusin", () => { typing = true; });
    filters.addEventListener("focusout", () => { typing = false; });
    window.setInterval(() => { if (!typing && !document.hidden) window.location.reload(); }, 30000);
  }
});
