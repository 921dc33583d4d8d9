// The table of index.html: every row of the run is filtered and sorted here over typed-array columns
// (data/columns.js); only the rows of the page shown have their text (data/rows/N.js) loaded.
"use strict";

(function () {
  var PAGE = 50;
  var FIELDS = ["conf_min", "conf_max", "phrase", "obj_min", "obj_max", "dur_min", "dur_max", "reason"];
  var C = null; // the columns
  var selected = new Uint32Array(0);
  var state = {};
  var renderToken = 0;

  function num(v) {
    return v === "" || v === undefined ? null : Number(v);
  }

  function readForm() {
    FIELDS.forEach(function (f) {
      state[f] = document.getElementById(f).value.trim();
    });
  }

  function writeForm() {
    FIELDS.forEach(function (f) {
      document.getElementById(f).value = state[f] || (f === "reason" ? "all" : "");
    });
  }

  function phraseMask(query) {
    if (!query) return null;
    var q = query.toLowerCase();
    var mask = new Uint8Array(C.phrases.length);
    for (var i = 0; i < C.phrases.length; i++) if (C.phrases[i].indexOf(q) >= 0) mask[i] = 1;
    return mask;
  }

  // Rows passing every filter, in row order.
  function filter() {
    var cmin = num(state.conf_min), cmax = num(state.conf_max);
    var omin = num(state.obj_min), omax = num(state.obj_max);
    var dmin = num(state.dur_min), dmax = num(state.dur_max);
    var reason = state.reason || "all";
    var want = reason.charAt(0) === "r" ? Number(reason.slice(1)) : -1;
    var mask = phraseMask(state.phrase);
    var out = new Uint32Array(C.n);
    var m = 0;
    for (var i = 0; i < C.n; i++) {
      var r = C.reason[i];
      if ((reason === "kept" && r !== 0) || (reason === "rejects" && r === 0) || (want >= 0 && r !== want)) continue;
      var c = C.confidence[i];
      if ((cmin !== null && !(c >= cmin)) || (cmax !== null && !(c <= cmax))) continue;
      var o = C.objects[i];
      if ((omin !== null && o < omin) || (omax !== null && o > omax)) continue;
      var d = C.duration[i];
      if ((dmin !== null && !(d >= dmin)) || (dmax !== null && !(d <= dmax))) continue;
      if (mask) {
        var hit = false;
        for (var j = C.phrase_offsets[i]; j < C.phrase_offsets[i + 1] && !hit; j++) hit = mask[C.phrase_ids[j]] === 1;
        if (!hit) continue;
      }
      out[m++] = i;
    }
    return out.slice(0, m);
  }

  // Sort by a column; rows without a value (NaN) go last either way; ties keep row order.
  function sort(rows) {
    if (!state.sort || !C[state.sort]) return rows;
    var col = C[state.sort], sign = state.dir === "desc" ? -1 : 1;
    return rows.sort(function (a, b) {
      var x = col[a], y = col[b];
      var nx = Number.isNaN(x), ny = Number.isNaN(y);
      if (nx || ny) return nx === ny ? a - b : nx ? 1 : -1;
      return x === y ? a - b : (x < y ? -sign : sign);
    });
  }

  function chunkOf(i) {
    return Math.floor(i / C.chunk);
  }

  function loadRows(rows) {
    var chunks = {};
    rows.forEach(function (i) { chunks[chunkOf(i)] = true; });
    return Promise.all(Object.keys(chunks).map(function (k) {
      var name = "rows/" + k;
      return PITE.load("data/rows/" + String(k).padStart(6, "0") + ".js", name);
    }));
  }

  function rowCells(i) {
    var text = PITE.data["rows/" + chunkOf(i)][i % C.chunk]; // [key, shard, caption, message]
    var key = text[0], shard = text[1], reason = C.reason[i];
    var keyCell = C.page[i]
      ? PITE.el("a", {href: "sample.html#shard=" + encodeURIComponent(shard) + "&key=" + encodeURIComponent(key),
        text: key})
      : PITE.el("span", {text: key,
        title: reason ? "a reject has no sample" : "no page: pite browse RUN --out DIR --keys " + key});
    var caption = reason
      ? PITE.el("span", {class: "reject"}, [PITE.el("b", {text: C.reasons[reason - 1]}), " " + text[3]])
      : PITE.el("span", {text: text[2]});
    var conf = C.confidence[i];
    var bar = PITE.el("span", {class: "bar"});
    bar.style.width = Number.isNaN(conf) ? "0" : Math.round(conf * 100) + "%";
    return [
      PITE.el("td", {class: "num muted", text: String(i + 1)}),
      PITE.el("td", {class: "key"}, [keyCell]),
      PITE.el("td", {class: "caption", title: reason ? text[3] : text[2]}, [caption]),
      PITE.el("td", {class: "num", text: reason ? "" : String(C.objects[i])}),
      PITE.el("td", {class: "num conf"}, [PITE.fmt(conf, 3), PITE.el("span", {class: "track"}, [bar])]),
      PITE.el("td", {class: "num", text: PITE.fmt(C.duration[i], 1)}),
      PITE.el("td", {class: "muted", text: shard})
    ];
  }

  function render() {
    var token = ++renderToken;
    var pages = Math.max(1, Math.ceil(selected.length / PAGE));
    state.page = Math.min(Math.max(0, Number(state.page) || 0), pages - 1);
    var start = state.page * PAGE;
    var rows = Array.prototype.slice.call(selected.subarray(start, start + PAGE));
    return loadRows(rows).then(function () {
      if (token !== renderToken) return;
      var body = document.querySelector("#rows tbody");
      body.textContent = "";
      rows.forEach(function (i) {
        body.appendChild(PITE.el("tr", {class: C.reason[i] ? "rejected" : ""}, rowCells(i)));
      });
      document.getElementById("count").textContent = selected.length + " of " + C.n + " rows match" +
        (state.sort ? ", by " + state.sort + (state.dir === "desc" ? " (highest first)" : " (lowest first)") : "");
      document.getElementById("where").textContent = "page " + (state.page + 1) + " of " + pages;
      document.getElementById("prev").disabled = document.getElementById("first").disabled = state.page === 0;
      document.getElementById("next").disabled = document.getElementById("last").disabled = state.page >= pages - 1;
      document.querySelectorAll("th button").forEach(function (b) {
        b.className = b.dataset.sort === state.sort ? "sorted " + state.dir : "";
      });
      PITE.writeHash(state);
      try { sessionStorage.setItem("pite-table", location.hash); } catch (e) { /* storage off: no way back */ }
      document.body.dataset.matching = String(selected.length);
      document.body.dataset.shown = String(rows.length);
      document.body.dataset.page = String(state.page);
      document.body.dataset.ready = "1";
    });
  }

  function refilter() {
    var t0 = performance.now();
    selected = sort(filter());
    PITE.lastQueryMs = performance.now() - t0;
    return render();
  }

  function setUp(columns) {
    C = columns;
    var n1 = C.n + 1;
    C.confidence = PITE.typed(C.confidence, Float32Array);
    C.duration = PITE.typed(C.duration, Float32Array);
    C.objects = PITE.typed(C.objects, Uint16Array);
    C.reason = PITE.typed(C.reason, Uint16Array);
    C.page = PITE.typed(C.page, Uint8Array);
    C.phrase_offsets = PITE.typed(C.phrase_offsets, Uint32Array);
    C.phrase_ids = PITE.typed(C.phrase_ids, Uint32Array);
    if (C.phrase_offsets.length !== n1) throw new Error("data/columns.js: phrase offsets do not match the rows");
    document.getElementById("title").textContent = C.run.name;
    document.title = C.run.name + " \u00b7 PiTe";
    var pages = 0;
    for (var i = 0; i < C.n; i++) pages += C.page[i];
    document.getElementById("summary").textContent = C.n + " rows: " + C.run.kept + " samples, " + C.run.rejects +
      " rejects; " + pages + " samples have a page";
    var select = document.getElementById("reason");
    var counts = new Uint32Array(C.reasons.length + 1);
    for (i = 0; i < C.n; i++) counts[C.reason[i]]++;
    var options = [["all", "all (" + C.n + ")"], ["kept", "samples (" + counts[0] + ")"],
      ["rejects", "rejects (" + (C.n - counts[0]) + ")"]];
    C.reasons.forEach(function (r, k) { options.push(["r" + (k + 1), "reject: " + r + " (" + counts[k + 1] + ")"]); });
    options.forEach(function (o) { select.appendChild(PITE.el("option", {value: o[0], text: o[1]})); });
  }

  function wire() {
    var timer = null;
    document.getElementById("filters").addEventListener("input", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { readForm(); state.page = 0; refilter(); }, 120);
    });
    document.getElementById("filters").addEventListener("submit", function (e) { e.preventDefault(); });
    document.getElementById("clear").addEventListener("click", function () {
      state = {};
      writeForm();
      refilter();
    });
    document.querySelectorAll("th button").forEach(function (b) {
      b.addEventListener("click", function () {
        var col = b.dataset.sort;
        if (state.sort !== col) { state.sort = col; state.dir = "asc"; }
        else if (state.dir === "asc") state.dir = "desc";
        else { state.sort = ""; state.dir = ""; }
        state.page = 0;
        refilter();
      });
    });
    var pages = function () { return Math.max(1, Math.ceil(selected.length / PAGE)); };
    var go = function (p) { state.page = p; render(); };
    document.getElementById("first").addEventListener("click", function () { go(0); });
    document.getElementById("prev").addEventListener("click", function () { go(state.page - 1); });
    document.getElementById("next").addEventListener("click", function () { go(state.page + 1); });
    document.getElementById("last").addEventListener("click", function () { go(pages() - 1); });
  }

  PITE.load("data/columns.js", "columns").then(function (columns) {
    var t0 = performance.now();
    setUp(columns);
    state = PITE.readHash();
    writeForm();
    wire();
    PITE.setUpMs = performance.now() - t0;
    return refilter();
  }).catch(function (e) { PITE.fail(e.message); });
})();
