<script>
(function () {
  var box = document.getElementById("items");
  var timer = null;
  function refresh() {
    timer = null;
    fetch("/approvals/fragment", {credentials: "same-origin"}).then(function (r) {
      if (r.status === 401) { window.location = "/approvals"; return null; }
      return r.ok ? r.text() : null;
    }).then(function (html) {
      if (html === null) return;
      var active = document.activeElement;
      if (active && active.tagName === "TEXTAREA" && active.value) return;  // don't wipe a comment being typed
      box.innerHTML = html;
    });
  }
  function soon() { if (!timer) timer = setTimeout(refresh, 150); }
  if (window.EventSource) {
    var source = new EventSource("/api/approvals/events");
    source.addEventListener("change", soon);
    source.onerror = function () { soon(); };
  }
  setInterval(refresh, 30000);  // ages and expiries move even without events
})();
</script>
