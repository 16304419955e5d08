/* comfyui-server dashboard: live regions without a framework.
 *
 * An element with data-live="URL" is replaced by the HTML fragment at URL every
 * data-interval milliseconds, only when it changed (so focus and scroll stay put).
 * Polling stops once the fragment holds [data-final]; elements with
 * data-hide-when-final="<region id>" are hidden then. A 401 goes to the sign-in page.
 * Hidden tabs do not poll. The region itself is not a live region (its timings change
 * every second); a [data-announce="<region id>"] status element tells screen readers
 * only when the [data-task-status] text inside it changes.
 */
(function () {
  "use strict";

  function loginUrl() {
    var here = location.pathname + location.search;
    return document.body.getAttribute("data-login") + "?next=" + encodeURIComponent(here);
  }

  function setStatus(region, text) {
    var status = document.querySelector('[data-live-status="' + region.id + '"]');
    if (status) status.textContent = text;
  }

  function announce(region) {
    var announcer = document.querySelector('[data-announce="' + region.id + '"]');
    var status = region.querySelector("[data-task-status]");
    if (!announcer || !status) return;
    var text = "Task " + status.textContent.trim();
    if (announcer.getAttribute("data-last") !== text) {
      announcer.setAttribute("data-last", text);
      announcer.textContent = text;
    }
  }

  function finish(region) {
    region.removeAttribute("data-live");
    document.querySelectorAll('[data-hide-when-final="' + region.id + '"]').forEach(function (el) {
      el.hidden = true;
    });
  }

  function live(region) {
    var url = region.getAttribute("data-live");
    var every = Number(region.getAttribute("data-interval")) || 2000;
    var last = null;

    function again() { window.setTimeout(tick, every); }

    function tick() {
      if (document.hidden) { again(); return; }
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { accept: "text/html" } })
        .then(function (response) {
          if (response.status === 401) { location.assign(loginUrl()); return null; }
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          if (html === null) return;
          if (html !== last) {
            last = html;
            region.innerHTML = html;
            announce(region);
          }
          setStatus(region, "");
          if (region.querySelector("[data-final]")) finish(region);
          else again();
        })
        .catch(function () {
          setStatus(region, "(cannot reach the server; retrying)");
          again();
        });
    }

    var status = region.querySelector("[data-task-status]");
    var announcer = document.querySelector('[data-announce="' + region.id + '"]');
    if (status && announcer) announcer.setAttribute("data-last", "Task " + status.textContent.trim());
    if (region.querySelector("[data-final]")) finish(region);
    else again();
  }

  function start() {
    document.querySelectorAll("[data-live]").forEach(live);
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
