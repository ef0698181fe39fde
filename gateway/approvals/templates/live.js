<script>
(function () {
  var box = document.getElementById("items");
  var base = document.body.dataset.base;  // listen.public_url's path prefix ("" without one)
  var timer = null;
  function refresh() {
    timer = null;
    fetch(base + "/approvals/fragment", {credentials: "same-origin"}).then(function (r) {
      if (r.status === 401) { signIn(); return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html === null) return;
      // Comments being written (focused or not) and the caret survive the update: each goes back to its call.
      var drafts = {}, focused = null, active = document.activeElement;
      box.querySelectorAll("[data-approval-id] textarea").forEach(function (area) {
        var id = area.closest("[data-approval-id]").dataset.approvalId;
        if (area.value) drafts[id] = area.value;
        if (area === active) focused = {id: id, start: area.selectionStart, end: area.selectionEnd};
      });
      box.innerHTML = html;
      box.querySelectorAll("[data-approval-id] textarea").forEach(function (area) {
        var id = area.closest("[data-approval-id]").dataset.approvalId;
        if (drafts[id] !== undefined) area.value = drafts[id];
        if (focused && focused.id === id) { area.focus(); area.setSelectionRange(focused.start, focused.end); }
      });
    });
  }
  function signIn() {
    // Back to the sign-in form, keeping a Review link's #apr_… (it survives the sign-in). A URL that differs
    // from this one only in its fragment would not load anything, so the same URL is reloaded instead.
    var to = base + "/approvals" + location.hash;
    if (location.pathname + location.search + location.hash === to) location.reload(); else location.assign(to);
  }
  function soon() { if (!timer) timer = setTimeout(refresh, 150); }
  var wait = 1000, opened = false;
  function listen() {
    var source = new EventSource(base + "/api/approvals/events");
    source.addEventListener("change", soon);
    source.onopen = function () { if (opened) soon(); opened = true; wait = 1000; };  // changes missed meanwhile
    source.onerror = function () {
      soon();
      // A reconnect answered with an error status (503 while the store is down, a proxy's 502) closes an
      // EventSource for good: open a new one, backing off, or the page would only refresh every 30 s.
      if (source.readyState === EventSource.CLOSED) { setTimeout(listen, wait); wait = Math.min(2 * wait, 30000); }
    };
  }
  if (window.EventSource) listen();
  setInterval(refresh, 30000);  // ages and expiries move even without events
})();
</script>
