// Live parts of the dashboard: a run's per-epoch curves and an inference deployment's recent
// predictions (both poll a JSON route of the dashboard), and an online stream's metric per
// window (from the page itself). All draw with uPlot (served by the dashboard).
(function () {
  "use strict";
  var TRAIN = "#1f6feb", VALIDATION = "#cf222e", BARS = "#2da44e", FROZEN = "#6e7781";

  function poll(url, everyMs, onData) {
    function tick() {
      fetch(url, { cache: "no-store", headers: { Accept: "application/json" } })
        .then(function (r) { return r.json(); })
        .then(function (data) { if (onData(data) !== false) setTimeout(tick, everyMs); })
        .catch(function () { setTimeout(tick, everyMs * 3); });
    }
    tick();
  }

  function width(node) { return Math.max(280, Math.min(node.clientWidth || 600, 1100)); }

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function fmt(v) { return typeof v === "number" ? v.toFixed(4) : ""; }

  // -- a run: one chart per model and metric, training and validation per epoch --------------
  function runCurves(root) {
    var charts = {};
    var wasTerminal = root.dataset.terminal === "true";
    var progress = document.getElementById("run-progress");
    var status = document.getElementById("run-status");

    function draw(model, base, points, epochs) {
      var key = model + "/" + base;
      var xs = points.map(function (p) { return p.epoch; });
      var train = points.map(function (p) { return p.metrics[base] === undefined ? null : p.metrics[base]; });
      var val = points.map(function (p) { var v = p.metrics["val_" + base]; return v === undefined ? null : v; });
      var chart = charts[key];
      if (!chart) {
        var state = { epochs: epochs };
        var box = el("figure", { "class": "chart", "data-model": model, "data-metric": base });
        box.appendChild(el("figcaption", {}, model + " · " + base));
        var area = el("div", { role: "img", "aria-label": base + " of " + model + " per epoch, training and validation" });
        box.appendChild(area);
        var details = el("details");
        details.appendChild(el("summary", {}, "Values per epoch"));
        var table = el("table", { "class": "values" });
        table.innerHTML = "<thead><tr><th scope='col'>epoch</th><th scope='col'>training</th><th scope='col'>validation</th></tr></thead><tbody></tbody>";
        details.appendChild(table);
        box.appendChild(details);
        root.appendChild(box);
        var plot = new uPlot({
          width: width(box), height: 220,
          scales: { x: { time: false, range: function (u, lo, hi) { return [1, Math.max(state.epochs || 0, hi || 0, 2)]; } } },
          axes: [{ label: "epoch" }, { label: base, size: 60 }],
          series: [
            { label: "epoch" },
            { label: "training", stroke: TRAIN, width: 2, points: { show: true } },
            { label: "validation", stroke: VALIDATION, width: 2, dash: [6, 4], points: { show: true } }
          ]
        }, [[], [], []], area);
        chart = charts[key] = { plot: plot, box: box, body: table.tBodies[0], state: state };
      }
      chart.state.epochs = epochs || xs.length;
      chart.plot.setData([xs, train, val]);
      chart.box.dataset.points = String(xs.length);
      chart.body.innerHTML = "";
      xs.forEach(function (x, i) {
        var row = chart.body.insertRow();
        row.insertCell().textContent = x;
        row.insertCell().textContent = fmt(train[i]);
        row.insertCell().textContent = fmt(val[i]);
      });
    }

    function update(data) {
      var lines = [];
      Object.keys(data.models).sort().forEach(function (model) {
        var m = data.models[model], points = m.points;
        var last = points.length ? points[points.length - 1] : null;
        var line = model + ": epoch " + (last ? last.epoch : 0) + " of " + (m.epochs || "?");
        if (last) {
          line += " (" + Object.keys(last.metrics).sort().map(function (k) {
            return k + " " + fmt(last.metrics[k]);
          }).join(", ") + ")";
        }
        lines.push(line);
        var bases = [];
        points.forEach(function (p) {
          Object.keys(p.metrics).forEach(function (k) {
            var b = k.indexOf("val_") === 0 ? k.slice(4) : k;
            if (bases.indexOf(b) < 0) bases.push(b);
          });
        });
        bases.forEach(function (b) { draw(model, b, points, m.epochs); });
      });
      var waiting = data.status === "waiting" ? "Waiting for the first epoch…" : "No per-epoch metrics.";
      progress.textContent = lines.join(" · ") || waiting;
      if (data.feed_problem) progress.textContent += " (results topic: " + data.feed_problem + ")";
      root.dataset.status = data.status;
      var badge = status.querySelector(".status");
      if (badge && data.status !== "waiting") {
        badge.textContent = data.status;
        badge.className = "status status-" + data.status;
      }
      if (data.terminal && !wasTerminal) { location.reload(); return false; }
      return !data.terminal;
    }

    window.addEventListener("resize", function () {
      Object.keys(charts).forEach(function (k) {
        var c = charts[k];
        c.plot.setSize({ width: width(c.box), height: 220 });
      });
    });
    poll(root.dataset.live, 700, update);
  }

  // -- an inference deployment: predicted-class counts (or values) over the sliding window ------
  function predictions(root) {
    var summary = document.getElementById("predictions-summary");
    var recent = document.getElementById("recent-predictions");
    var plot = null, kind = null, size = 0;

    function chart(data) {
      var xs, ys, opts;
      if (data.kind === "classes") {
        xs = data.counts.map(function (_, i) { return i; });
        ys = data.counts;
        opts = {
          width: width(root), height: 240,
          scales: { x: { time: false, range: [-0.5, xs.length - 0.5] }, y: { range: function (u, lo, hi) { return [0, Math.max(hi || 0, 1)]; } } },
          axes: [{ label: "predicted class", values: function (u, vals) { return vals.map(function (v) { return Number.isInteger(v) ? v : ""; }); } }, { label: "predictions" }],
          series: [{ label: "class" }, { label: "predictions", fill: BARS, stroke: BARS, paths: uPlot.paths.bars({ size: [0.7, 80] }), points: { show: false } }]
        };
      } else {
        xs = data.values.map(function (v) { return v[0]; });
        ys = data.values.map(function (v) { return v[1]; });
        opts = {
          width: width(root), height: 240,
          axes: [{}, { label: "predicted value" }],
          series: [{ label: "time" }, { label: "prediction", stroke: TRAIN, width: 2, points: { show: true } }]
        };
      }
      if (!plot || kind !== data.kind || size !== xs.length && data.kind === "classes") {
        if (plot) plot.destroy();
        root.innerHTML = "";
        var area = el("div", { role: "img", "aria-label": data.kind === "classes" ? "count of each predicted class in the window" : "predicted values over time" });
        root.appendChild(area);
        plot = new uPlot(opts, [xs, ys], area);
        root.plot = plot;  // the drawn scales, for tests and the curious
        kind = data.kind; size = xs.length;
      } else {
        plot.setData([xs, ys]);
      }
    }

    function update(data) {
      root.dataset.total = String(data.total);
      root.dataset.kind = data.kind;
      if (!data.total) {
        summary.textContent = "No prediction on " + data.topic + " yet." + (data.feed_problem ? " (" + data.feed_problem + ")" : "");
        return true;
      }
      chart(data);
      if (data.kind === "classes") {
        var top = data.counts.indexOf(Math.max.apply(null, data.counts));
        summary.textContent = data.total + " predictions in the window of the last " + data.window +
          "; most predicted: class " + top + " (" + Math.round(100 * data.counts[top] / data.total) + "%)";
        root.dataset.counts = data.counts.join(",");
      } else {
        summary.textContent = data.total + " predictions in the window of the last " + data.window;
      }
      recent.hidden = false;
      var body = recent.tBodies[0];
      body.innerHTML = "";
      data.recent.forEach(function (p) {
        var row = body.insertRow();
        row.insertCell().textContent = new Date(p.time * 1000).toLocaleTimeString();
        row.insertCell().textContent = p.key;
        row.insertCell().textContent = data.kind === "classes" ? "class " + p.predicted : fmt(p.predicted);
        row.insertCell().textContent = p.score === null ? "" : fmt(p.score);
      });
      return true;
    }

    poll(root.dataset.live, 1000, update);
  }

  // -- an online stream: the monitored metric per window, promoted vs candidate, promotions ----
  function streamChart(root) {
    var data = JSON.parse(document.getElementById("stream-chart-data").textContent);
    var rings = data.candidate.map(function (v, i) { return data.promote[i] ? v : null; });
    var area = el("div", { role: "img", "aria-label": data.metric + " per window of the promoted model and the candidate; rings mark " + rings.filter(function (v) { return v !== null; }).length + " promotion(s)" });
    root.appendChild(area);
    var opts = {
      width: width(root), height: 260,
      scales: { x: { time: false, range: function (u, lo, hi) { return [-0.5, Math.max(hi || 0, 1) + 0.5]; } } },
      axes: [{ label: "window", values: function (u, vals) { return vals.map(function (v) { return Number.isInteger(v) ? v : ""; }); } }, { label: data.metric, size: 60 }],
      series: [
        { label: "window" },
        { label: "promoted model", stroke: TRAIN, width: 2, spanGaps: true, points: { show: true } },
        { label: "candidate", stroke: VALIDATION, width: 2, dash: [6, 4], points: { show: true } },
        { label: "frozen (first promoted)", stroke: FROZEN, width: 2, dash: [2, 3], spanGaps: true, points: { show: true } },
        { label: "promotion", stroke: BARS, paths: function () { return null; }, points: { show: true, size: 14, width: 3, stroke: BARS, fill: "transparent" } }
      ]
    };
    root.plot = new uPlot(opts, [data.windows, data.promoted, data.candidate, data.frozen, rings], area);
    root.dataset.points = String(data.windows.length);
    window.addEventListener("resize", function () { root.plot.setSize({ width: width(root), height: 260 }); });
  }

  // A refused form: keyboard and screen reader users land on register's answer.
  var refused = document.getElementById("refused");
  if (refused) refused.focus();
  var curves = document.getElementById("curves");
  if (curves) runCurves(curves);
  var live = document.getElementById("predictions");
  if (live) predictions(live);
  var stream = document.getElementById("stream-chart");
  if (stream) streamChart(stream);
})();
