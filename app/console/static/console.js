// The console's own behaviour, loaded by every page (no inline script: the pages' CSP allows only files).
// Values from tasks are written with textContent only, never as HTML.
(function () {
  "use strict";

  // htmx requests carry the session's CSRF token as a header (forms carry it as a field).
  document.addEventListener("htmx:configRequest", function (event) {
    var token = document.body.dataset.csrf;
    if (token) { event.detail.headers["X-CSRF-Token"] = token; }
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
    source.addEventListener("state", function (event) {
      var run = JSON.parse(event.data);
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
        .then(function (series) {
          if (!series) { return; }
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
