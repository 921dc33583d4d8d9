// sample.html: one sample's frames (a JPEG sheet) with every object's points, tails, mask outline and box drawn on
// a canvas from the sample's arrays, a scrubber over the frames, the caption with phrases coloured like their tracks.
"use strict";

(function () {
  var TAIL = 10; // sampled frames of history drawn behind a point
  var S = null; // the sample
  var traj = null, vis = null; // Float32 (N, K, T, 2) in [0, 1] of the frame (outside when off it), Uint8 (N, K, T)
  var sheet = null;
  var current = 0; // position in S.shown
  var solo = -1; // object shown alone, or -1
  var timer = null;

  function hexRgb(hex, alpha) {
    var v = parseInt(hex.slice(1), 16);
    return "rgba(" + (v >> 16) + "," + ((v >> 8) & 255) + "," + (v & 255) + "," + alpha + ")";
  }

  function luminance(hex) {
    var v = parseInt(hex.slice(1), 16);
    return (0.299 * (v >> 16) + 0.587 * ((v >> 8) & 255) + 0.114 * (v & 255)) / 255;
  }

  function point(i, k, t) {
    var K = S.shape[1], T = S.shape[2];
    var at = ((i * K + k) * T + t) * 2;
    return [traj[at], traj[at + 1], vis[(i * K + k) * T + t] === 1];
  }

  function captionNode() {
    var p = document.getElementById("caption");
    var spans = S.objects.map(function (o, i) { return {s: o.char_span[0], e: o.char_span[1], i: i}; })
      .concat(S.dropped.filter(function (d) { return d.char_span; }).map(function (d) {
        return {s: d.char_span[0], e: d.char_span[1], i: -1, why: d.reason};
      }))
      .sort(function (a, b) { return a.s - b.s; });
    var at = 0;
    spans.forEach(function (sp) {
      if (sp.s < at) return; // overlapping spans: the first one wins
      p.appendChild(document.createTextNode(S.caption.slice(at, sp.s)));
      var text = S.caption.slice(sp.s, sp.e);
      if (sp.i >= 0) {
        var c = S.objects[sp.i].colour;
        var m = PITE.el("mark", {text: text, title: "object " + (sp.i + 1) + ": confidence " +
          PITE.fmt(S.objects[sp.i].confidence, 2)});
        m.style.background = hexRgb(c, 0.22);
        m.style.borderBottom = "3px solid " + c;
        p.appendChild(m);
      } else {
        p.appendChild(PITE.el("span", {class: "dropped", text: text, title: "no object: " + sp.why}));
      }
      at = sp.e;
    });
    p.appendChild(document.createTextNode(S.caption.slice(at)));
  }

  function size() {
    var canvas = document.getElementById("frame");
    var dpr = window.devicePixelRatio || 1;
    // As wide as the column allows, but short enough that the scrubber stays on screen.
    var room = document.getElementById("sample").clientWidth, aspect = S.frame_size[0] / S.frame_size[1];
    var w = Math.max(160, Math.min(room, Math.round(0.68 * window.innerHeight * aspect)));
    canvas.style.width = w + "px";
    canvas.parentNode.style.maxWidth = Math.max(w, 480) + "px";
    canvas.width = Math.round(w * dpr);
    canvas.height = Math.round(w * dpr * S.frame_size[1] / S.frame_size[0]);
  }

  function drawOutline(ctx, o, W, H, scale) {
    ctx.lineJoin = "round";
    [["rgba(0,0,0,0.75)", 4], [o.colour, 2]].forEach(function (pen) {
      ctx.strokeStyle = pen[0];
      ctx.lineWidth = pen[1] * scale;
      (o.outline || []).forEach(function (poly) {
        ctx.beginPath();
        poly.forEach(function (xy, j) { (j ? ctx.lineTo : ctx.moveTo).call(ctx, xy[0] * W, xy[1] * H); });
        ctx.closePath();
        ctx.stroke();
      });
    });
    ctx.setLineDash([6 * scale, 4 * scale]);
    ctx.strokeStyle = o.colour;
    ctx.lineWidth = 1.5 * scale;
    ctx.strokeRect(o.box[0] * W, o.box[1] * H, (o.box[2] - o.box[0]) * W, (o.box[3] - o.box[1]) * H);
    ctx.setLineDash([]);
  }

  // The propagated mask's outline at this frame (the propagate stage's independent mask track), thin and dashed.
  function drawPropagated(ctx, o, t, W, H, scale) {
    var polys = o.propagated_outline[t] || [];
    ctx.setLineDash([4 * scale, 3 * scale]);
    [["rgba(0,0,0,0.7)", 3], [o.colour, 1.5]].forEach(function (pen) {
      ctx.strokeStyle = pen[0];
      ctx.lineWidth = pen[1] * scale;
      polys.forEach(function (poly) {
        ctx.beginPath();
        poly.forEach(function (xy, j) { (j ? ctx.lineTo : ctx.moveTo).call(ctx, xy[0] * W, xy[1] * H); });
        ctx.closePath();
        ctx.stroke();
      });
    });
    ctx.setLineDash([]);
  }

  function drawPoints(ctx, i, t, W, H, scale, tails) {
    var o = S.objects[i];
    for (var k = 0; k < S.shape[1]; k++) {
      if (tails) {
        ctx.beginPath();
        for (var u = Math.max(0, t - TAIL); u <= t; u++) {
          var q = point(i, k, u);
          (u === Math.max(0, t - TAIL) ? ctx.moveTo : ctx.lineTo).call(ctx, q[0] * W, q[1] * H);
        }
        ctx.strokeStyle = "rgba(0,0,0,0.6)";
        ctx.lineWidth = 3.5 * scale;
        ctx.stroke();
        ctx.strokeStyle = o.colour;
        ctx.lineWidth = 1.5 * scale;
        ctx.stroke();
      }
      var p = point(i, k, t);
      ctx.beginPath();
      ctx.arc(p[0] * W, p[1] * H, 4.5 * scale, 0, 2 * Math.PI);
      ctx.lineWidth = 1.5 * scale;
      ctx.strokeStyle = "#000";
      if (p[2]) {
        ctx.fillStyle = o.colour;
        ctx.fill();
        ctx.stroke();
      } else {
        ctx.strokeStyle = o.colour;
        ctx.lineWidth = 2 * scale;
        ctx.stroke();
      }
    }
  }

  function drawLabel(ctx, i, t, W, H, scale) {
    var o = S.objects[i];
    var p = point(i, 0, t);
    var text = o.phrase.length > 28 ? o.phrase.slice(0, 27) + "\u2026" : o.phrase;
    ctx.font = Math.round(12 * scale) + "px system-ui, sans-serif";
    var w = ctx.measureText(text).width + 8 * scale, h = 17 * scale;
    var x = Math.min(Math.max(0, p[0] * W + 8 * scale), W - w);
    var y = Math.min(Math.max(0, p[1] * H - h - 6 * scale), H - h);
    ctx.fillStyle = o.colour;
    ctx.fillRect(x, y, w, h);
    ctx.strokeStyle = "rgba(0,0,0,0.7)";
    ctx.lineWidth = scale;
    ctx.strokeRect(x, y, w, h);
    ctx.fillStyle = luminance(o.colour) > 0.5 ? "#000" : "#fff";
    ctx.fillText(text, x + 4 * scale, y + 12.5 * scale);
  }

  function draw() {
    var canvas = document.getElementById("frame");
    var ctx = canvas.getContext("2d");
    // Strokes scale with the canvas, so marks keep their size relative to the picture on any screen.
    var W = canvas.width, H = canvas.height, scale = Math.max(1, W / 640);
    var j = current, t = S.shown[j];
    if (sheet) {
      var fw = S.frame_size[0], fh = S.frame_size[1];
      ctx.drawImage(sheet, (j % S.sheet_cols) * fw, Math.floor(j / S.sheet_cols) * fh, fw, fh, 0, 0, W, H);
    } else {
      ctx.fillStyle = "#3a3f47";
      ctx.fillRect(0, 0, W, H);
    }
    var outline = document.getElementById("show-outline").checked;
    var tails = document.getElementById("show-tails").checked;
    var labels = document.getElementById("show-labels").checked;
    var propagated = document.getElementById("show-propagated").checked;
    S.objects.forEach(function (o, i) {
      if (solo >= 0 && solo !== i) return;
      if (outline && o.frame === t) drawOutline(ctx, o, W, H, scale);
      if (propagated && o.propagated_outline) drawPropagated(ctx, o, t, W, H, scale);
      drawPoints(ctx, i, t, W, H, scale, tails);
    });
    if (labels) S.objects.forEach(function (o, i) { if (solo < 0 || solo === i) drawLabel(ctx, i, t, W, H, scale); });
    var grounded = S.objects.filter(function (o) { return o.frame === t; }).map(function (o) { return o.phrase; });
    document.getElementById("frame-info").textContent = "frame " + (j + 1) + " of " + S.shown.length +
      " shown \u00b7 sample " + (t + 1) + " of " + S.shape[2] + " \u00b7 t = " + S.frame_times[t].toFixed(2) +
      " s \u00b7 source frame " + S.frame_indices[t] +
      (grounded.length ? " \u00b7 grounded here: " + grounded.join(", ") : "");
    document.getElementById("scrubber").value = String(j);
    document.body.dataset.frame = String(j);
    document.body.dataset.drawn = "1";
  }

  function goTo(j) {
    current = Math.min(Math.max(0, j), S.shown.length - 1);
    PITE.writeHash({shard: S.shard, key: S.key, frame: current ? String(current) : ""});
    draw();
  }

  function play() {
    var button = document.getElementById("play");
    if (timer) {
      clearInterval(timer);
      timer = null;
      button.innerHTML = "&#9654;";
      return;
    }
    button.innerHTML = "&#10074;&#10074;";
    timer = setInterval(function () { goTo(current + 1 >= S.shown.length ? 0 : current + 1); }, 250);
  }

  function signalCell(v) {
    var bar = PITE.el("span", {class: "bar"});
    bar.style.width = v === null || v === undefined ? "0" : Math.round(v * 100) + "%";
    return PITE.el("td", {class: "num conf"}, [PITE.fmt(v, 2), PITE.el("span", {class: "track"}, [bar])]);
  }

  function objectsTable() {
    var names = [];
    S.objects.forEach(function (o) {
      Object.keys(o.confidence_signals || {}).forEach(function (k) { if (names.indexOf(k) < 0) names.push(k); });
    });
    var head = ["", "phrase", "confidence"].concat(names, ["detector score", "mask area", "grounded at"]);
    document.querySelector("#objects thead").appendChild(PITE.el("tr", {}, head.map(function (h) {
      return PITE.el("th", {text: h});
    })));
    var body = document.querySelector("#objects tbody");
    S.objects.forEach(function (o, i) {
      var sw = PITE.el("span", {class: "swatch"});
      sw.style.background = o.colour;
      var at = PITE.el("a", {href: "#", text: "sample " + (o.frame + 1)});
      at.addEventListener("click", function (e) {
        e.preventDefault();
        e.stopPropagation();
        goTo(S.shown.indexOf(o.frame));
      });
      var cells = [PITE.el("td", {}, [sw]), PITE.el("td", {text: o.phrase + (o.note ? " (" + o.note + ")" : "")}),
        signalCell(o.confidence)];
      names.forEach(function (k) { cells.push(signalCell((o.confidence_signals || {})[k])); });
      cells.push(PITE.el("td", {class: "num", text: PITE.fmt(o.score, 2)}),
        PITE.el("td", {class: "num", text: PITE.fmt(o.mask_area * 100, 1) + " %"}), PITE.el("td", {}, [at]));
      var row = PITE.el("tr", {class: "object"}, cells);
      row.addEventListener("click", function () {
        solo = solo === i ? -1 : i;
        document.querySelectorAll("#objects tbody tr").forEach(function (r, k) {
          r.classList.toggle("solo", solo === k);
        });
        draw();
      });
      body.appendChild(row);
    });
  }

  function details() {
    var more = document.getElementById("more");
    if (S.events.length) {
      more.appendChild(PITE.el("h2", {text: "Events"}));
      more.appendChild(PITE.el("ul", {}, S.events.map(function (e) {
        return PITE.el("li", {text: e.start.toFixed(1) + "\u2013" + e.end.toFixed(1) + " s: " + e.text});
      })));
    }
    if (S.dropped.length) {
      more.appendChild(PITE.el("h2", {text: "Phrases without an object"}));
      more.appendChild(PITE.el("ul", {}, S.dropped.map(function (d) {
        return PITE.el("li", {text: d.phrase + ": " + d.reason});
      })));
    }
    var backends = S.provenance.backends || {};
    more.appendChild(PITE.el("h2", {text: "Made by"}));
    more.appendChild(PITE.el("p", {class: "muted", text: Object.keys(backends).map(function (k) {
      return k + " " + backends[k];
    }).join(" \u00b7 ") + (S.provenance.config_hash ? " \u00b7 config " + S.provenance.config_hash : "")}));
  }

  function ticks() {
    var box = document.getElementById("ticks");
    var last = Math.max(1, S.shown.length - 1);
    S.objects.forEach(function (o) {
      var j = S.shown.indexOf(o.frame);
      var tick = PITE.el("span", {class: "tick", title: o.phrase + " grounded here"});
      tick.style.left = (100 * j / last) + "%";
      tick.style.background = o.colour;
      box.appendChild(tick);
    });
  }

  function wire() {
    var scrubber = document.getElementById("scrubber");
    scrubber.max = String(S.shown.length - 1);
    scrubber.addEventListener("input", function () { goTo(Number(scrubber.value)); });
    document.getElementById("play").addEventListener("click", play);
    document.getElementById("step-back").addEventListener("click", function () { goTo(current - 1); });
    document.getElementById("step-on").addEventListener("click", function () { goTo(current + 1); });
    ["show-outline", "show-tails", "show-labels", "show-propagated"].forEach(function (id) {
      document.getElementById(id).addEventListener("change", draw);
    });
    document.addEventListener("keydown", function (e) {
      if (e.target.tagName === "INPUT" && e.target.type !== "range" && e.target.type !== "checkbox") return;
      if (e.key === "ArrowLeft") { e.preventDefault(); goTo(current - 1); }
      if (e.key === "ArrowRight") { e.preventDefault(); goTo(current + 1); }
      if (e.key === " ") { e.preventDefault(); play(); }
    });
    window.addEventListener("resize", function () { size(); draw(); });
  }

  function show(sample) {
    S = sample;
    traj = PITE.typed(S.traj, Float32Array);
    vis = PITE.typed(S.vis, Uint8Array);
    document.title = S.key + " \u00b7 PiTe";
    document.getElementById("title").textContent = S.key;
    document.getElementById("facts").textContent = S.video_id + " \u00b7 " + S.width + "\u00d7" + S.height +
      " \u00b7 " + S.duration.toFixed(1) + " s at " + S.fps.toFixed(1) + " fps \u00b7 " + S.shape[2] +
      " sampled frames, " + S.shape[1] + " points per object \u00b7 " + S.shard;
    document.getElementById("sample").hidden = false;
    if (S.frames_note) {
      var note = document.getElementById("frames-note");
      note.textContent = S.frames_note;
      note.hidden = false;
    }
    if (S.objects.some(function (o) { return o.propagated_outline; })) {
      document.getElementById("propagated-toggle").hidden = false;
    }
    captionNode();
    objectsTable();
    details();
    ticks();
    wire();
    size();
    current = Math.min(Math.max(0, Number(PITE.readHash().frame) || 0), S.shown.length - 1);
    if (!S.sheet) return goTo(current);
    return new Promise(function (resolve, reject) {
      var img = new Image();
      img.onload = function () { sheet = img; goTo(current); resolve(); };
      img.onerror = function () { reject(new Error("cannot load the frames " + img.src)); };
      img.src = "samples/" + encodeURIComponent(S.shard) + "/" + encodeURIComponent(S.sheet);
    });
  }

  var where = PITE.readHash();
  try {
    var back = sessionStorage.getItem("pite-table");
    if (back) document.getElementById("back").href = "index.html" + back;
  } catch (e) { /* storage off: plain link back */ }
  if (!where.key || !where.shard) {
    PITE.fail("no sample named: open a sample from the table (sample.html#shard=...&key=...)");
  } else {
    PITE.load("samples/" + encodeURIComponent(where.shard) + "/" + encodeURIComponent(where.key) + ".js", "sample")
      .then(show)
      .catch(function (e) {
        PITE.fail(e.message + ": this sample has no page; add it with pite browse RUN --out DIR --keys " + where.key);
      });
  }
})();
