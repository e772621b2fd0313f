// megaplan-cloudd dashboard: the page is rendered by the daemon; this only swaps in the live
// part the event stream sends after every tick, and asks before an action. No polling.
"use strict";
(function () {
  // The token came in the query once and is now in an HttpOnly cookie: drop it from the
  // address bar and the history.
  if (/[?&]token=/.test(window.location.search)) {
    window.history.replaceState(null, "", window.location.pathname);
  }
  var live = document.getElementById("live");
  var note = document.getElementById("live-note");
  if (live && window.EventSource) {
    var source = new EventSource(live.getAttribute("data-events"));
    source.addEventListener("update", function (e) {
      live.innerHTML = e.data;
      live.setAttribute("data-updates", String(Number(live.getAttribute("data-updates") || "0") + 1));
      if (note) { note.textContent = "live · updated " + new Date().toLocaleTimeString(); }
    });
    source.addEventListener("error", function () {
      if (note) { note.textContent = "disconnected: run megaplan-cloudctl dashboard again"; }
    });
  }
  // Actions ask first. Delegated, so forms swapped in by an update are covered too.
  document.addEventListener("submit", function (e) {
    var form = e.target;
    var question = form && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) { e.preventDefault(); }
  });
})();
