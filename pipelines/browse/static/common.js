// Shared by index.html and sample.html: data files are scripts that call PITE.put(name, value), loaded by adding
// a <script> tag, because browsers refuse fetch() on file:// and the site must open from a folder too.
"use strict";

var PITE = window.PITE || {};
window.PITE = PITE;
PITE.data = PITE.data || {};
PITE.pending = PITE.pending || {};
PITE.errors = PITE.errors || [];

PITE.put = function (name, value) {
  PITE.data[name] = value;
};

// Resolves with the value the script at `src` put under `name`.
PITE.load = function (src, name) {
  if (PITE.data[name] !== undefined) return Promise.resolve(PITE.data[name]);
  if (PITE.pending[src]) return PITE.pending[src];
  PITE.pending[src] = new Promise(function (resolve, reject) {
    var s = document.createElement("script");
    s.src = src;
    s.onload = function () {
      if (PITE.data[name] === undefined) reject(new Error(src + " put no " + name));
      else resolve(PITE.data[name]);
    };
    s.onerror = function () {
      delete PITE.pending[src];
      reject(new Error("cannot load " + src));
    };
    document.head.appendChild(s);
  });
  return PITE.pending[src];
};

// base64 of little-endian values -> a typed array (Float32Array, Uint16Array, ...).
PITE.typed = function (b64, Type) {
  var bin = atob(b64);
  var bytes = new Uint8Array(bin.length);
  for (var i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  return new Type(bytes.buffer);
};

// "#a=1&b=x" <-> {a: "1", b: "x"}: the page's state lives in the address, so a view can be linked and reloaded.
PITE.readHash = function () {
  var out = {};
  location.hash.replace(/^#/, "").split("&").forEach(function (part) {
    if (!part) return;
    var eq = part.indexOf("=");
    if (eq < 0) out[decodeURIComponent(part)] = "";
    else out[decodeURIComponent(part.slice(0, eq))] = decodeURIComponent(part.slice(eq + 1));
  });
  return out;
};

PITE.writeHash = function (state) {
  var parts = [];
  Object.keys(state).forEach(function (k) {
    var v = state[k];
    if (v === "" || v === null || v === undefined) return;
    parts.push(encodeURIComponent(k) + "=" + encodeURIComponent(v));
  });
  history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname + location.search);
};

PITE.el = function (tag, attrs, children) {
  var e = document.createElement(tag);
  Object.keys(attrs || {}).forEach(function (k) {
    if (k === "text") e.textContent = attrs[k];
    else if (k === "class") e.className = attrs[k];
    else e.setAttribute(k, attrs[k]);
  });
  (children || []).forEach(function (c) {
    e.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
  });
  return e;
};

PITE.fmt = function (v, digits) {
  return v === null || v === undefined || Number.isNaN(v) ? "\u2013" : Number(v).toFixed(digits);
};

// Shown on the page as well as in the console: a user sees why a view is empty.
PITE.fail = function (message) {
  PITE.errors.push(String(message));
  var box = document.getElementById("error");
  if (box) {
    box.textContent = String(message);
    box.hidden = false;
  }
  document.body.dataset.error = String(message);
};

window.addEventListener("error", function (e) {
  PITE.fail(e.message || "script error");
});
window.addEventListener("unhandledrejection", function (e) {
  PITE.fail(e.reason && e.reason.message ? e.reason.message : String(e.reason));
});
