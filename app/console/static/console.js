// The console's own behaviour, loaded by every page (no inline script: the pages' CSP allows only files).
// Values from tasks are written with textContent only, never as HTML.
(function () {
  "use strict";

  // htmx requests carry the session's CSRF token as a header (forms carry it as a field).
  document.addEventListener("htmx:configRequest", function (event) {
    var token = document.body.dataset.csrf;
    if (token) { event.detail.headers["X-CSRF-Token"] = token; }
  });

  // A live part (the overview's figures, a bulk replay's progress, the active tasks) that could not be refreshed
  // says so above itself, with the API's reason, instead of showing stale figures as if they were current; the
  // note goes once a refresh succeeds again.
  function noteFor(elt) {
    var id = (elt.id || "live") + "-stale";
    var note = document.getElementById(id);
    if (!note && elt.parentNode) {
      note = document.createElement("p");
      note.id = id;
      note.className = "error stale";
      note.setAttribute("role", "alert");
      elt.parentNode.insertBefore(note, elt);
    }
    return note;
  }
  var shownAt = {};  // when each live part last showed fresh figures (the page's load, then each refresh)
  var loadedAt = Date.now();
  function refreshFailed(elt, reason) {
    var note = noteFor(elt);
    if (!note) { return; }
    var polled = (elt.getAttribute("hx-trigger") || "").indexOf("every") === 0;
    var since = new Date(shownAt[elt.id] || loadedAt).toISOString().slice(11, 19);
    note.textContent = reason + (polled ? " What is shown below is from " + since + " UTC; the console keeps trying." : "");
    if (!polled) { elt.textContent = ""; }  // a one-off load ("Asking the workers…") is not going to answer
  }
  document.addEventListener("htmx:responseError", function (event) {
    var xhr = event.detail.xhr;
    var alert = new DOMParser().parseFromString(xhr.responseText || "", "text/html").querySelector("[role=alert]");
    refreshFailed(event.detail.elt, "Could not refresh (HTTP " + xhr.status + "): " +
      (alert ? alert.textContent.trim() : "the console did not answer this part."));
  });
  document.addEventListener("htmx:sendError", function (event) {
    refreshFailed(event.detail.elt, "The console's server did not answer: it may be down or unreachable.");
  });
  document.addEventListener("htmx:afterSwap", function (event) {
    var target = event.detail.target;
    var note = document.getElementById((target.id || "live") + "-stale");
    if (note) { note.remove(); }
    if (target.id) { shownAt[target.id] = Date.now(); }
  });

  // Edited keyword arguments are checked to be a JSON object before the form is sent (the server checks again).
  function checkJsonFields() {
    document.querySelectorAll("form[data-json-field]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        var field = form.elements[form.dataset.jsonField];
        var message = document.getElementById(field.getAttribute("aria-describedby"));
        var problem = "";
        if (field.value.trim()) {
          try {
            var value = JSON.parse(field.value);
            if (value === null || typeof value !== "object" || Array.isArray(value)) {
              problem = "The keyword arguments must be a JSON object ({\"name\": value, ...}).";
            }
          } catch (error) {
            problem = "The keyword arguments are not valid JSON: " + error.message;
          }
        }
        if (message) { message.textContent = problem; }
        if (problem) {
          event.preventDefault();
          field.setAttribute("aria-invalid", "true");
          field.focus();
        }
      });
    });
  }

  // A run's page follows the run's Server-Sent Events until it finished.
  function followRun() {
    var live = document.querySelector("[data-events-url]");
    if (!live || !window.EventSource) { return; }
    var source = new EventSource(live.dataset.eventsUrl);
    var state = document.getElementById("run-state");
    // A lost stream says so (the browser retries on its own; a refused one, e.g. 429, is closed for good).
    source.addEventListener("error", function () {
      document.getElementById("run-live").textContent = source.readyState === EventSource.CLOSED ?
        "(live updates stopped: the server refused the stream; reload the page to try again)" :
        "(connection lost; reconnecting…)";
    });
    source.addEventListener("state", function (event) {
      var run = JSON.parse(event.data);
      document.getElementById("run-live").textContent = "(live)";
      state.textContent = run.state;
      state.className = "badge state-" + run.state;
      document.getElementById("run-progress").textContent = run.progress ? JSON.stringify(run.progress) : "";
      var result = document.getElementById("run-result");
      if (run.error) { result.textContent = run.error; }
      else if (run.result !== null && run.result !== undefined) { result.textContent = JSON.stringify(run.result, null, 2); }
    });
    source.addEventListener("end", function () {
      source.close();
      document.getElementById("run-live").textContent = "(finished)";
    });
  }

  // The overview's charts: uPlot over /console/overview/series.json, redrawn every data-refresh-s seconds.
  function drawCharts() {
    var holder = document.querySelector(".charts[data-series-url]");
    if (!holder || !window.uPlot) { return; }
    var plots = {};
    function draw() {
      fetch(holder.dataset.seriesUrl, { credentials: "same-origin" })
        .then(function (response) { return response.ok ? response.json() : null; })
        .catch(function () { return null; })
        .then(function (series) {
          var note = document.getElementById("charts-stale");
          if (!series) {
            holder.id = "charts";
            refreshFailed(holder, "Could not load the charts' figures.");
            return;
          }
          if (note) { note.remove(); }
          holder.querySelectorAll(".chart[data-chart]").forEach(function (box) {
            var key = box.dataset.chart;
            var data = [series.t, series[key]];
            if (plots[key]) { plots[key].setData(data); return; }
            var width = Math.max(280, box.clientWidth || 400);
            plots[key] = new window.uPlot({
              width: width, height: 180,
              series: [{}, { label: box.dataset.label, stroke: key === "failed" ? "#b3261e" : "#1f5fa8", width: 2, fill: key === "failed" ? "rgba(179,38,30,0.08)" : "rgba(31,95,168,0.08)" }],
              axes: [{}, { size: 50 }],
              legend: { show: true },
            }, data, box);
          });
          holder.dataset.drawn = "true";
        });
    }
    draw();
    setInterval(draw, 1000 * Number(holder.dataset.refreshS || 30));
  }

  document.addEventListener("DOMContentLoaded", function () {
    checkJsonFields();
    followRun();
    drawCharts();
  });
})();
