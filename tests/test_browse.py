"""`pite browse`: the site of a small run (samples and a reject), its data against the shards, a second call adding
pages, and the site in headless Chromium: filter, sort, open a sample, scrub, with no console error."""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from annotate.synthetic import WorldParams
from pipelines.browse.pages import build_pages
from pipelines.shards import iter_samples, open_index
from tests.annotate_helpers import write_manifest

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "annotate" / "demo.yaml"
PARAMS = WorldParams(width=128, height=128, frames=30)
T = 16


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """Five synthetic clips and one unreadable video: five samples and one reject, in three shards."""
    root = tmp_path_factory.mktemp("clips")
    manifest = write_manifest(root, 11, 5, PARAMS)
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    (root / "broken.mp4").write_bytes(b"not a video at all")
    rows.append({**rows[0], "video_id": "broken-clip", "video": "broken.mp4", "gt": None})
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "run"
    r = subprocess.run([sys.executable, "-m", "pipelines.annotate", "--config", str(CONFIG), f"input={manifest}",
                        f"out={out}", "synth.n=0", f"num_frames={T}", "progress=false", "rows_per_shard=2",
                        "executor=local", "max_reject_share=0.5"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    return out


def browse(run: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.browse", str(run), "--out", str(out), "--workers", "1",
                           *extra], cwd=REPO, capture_output=True, text=True, timeout=300)


def put(path: Path):
    """The value a data script gives to PITE.put(name, value)."""
    text = path.read_text()
    return json.loads(text[text.index(",") + 1: text.rindex(")")])


def typed(b64: str, dtype: str) -> np.ndarray:
    import base64

    return np.frombuffer(base64.b64decode(b64), dtype=dtype)


def least_confidence(run: Path) -> dict[str, float]:
    rows = open_index(run).to_table(columns=["key", "confidence"]).to_pylist()
    return {r["key"]: min(r["confidence"]) for r in rows}


@pytest.fixture(scope="module")
def site(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    r = browse(run, out, "--pages", "3")
    assert r.returncode == 0, r.stderr
    assert "6 rows (5 samples, 1 rejects), 3 sample pages" in r.stdout
    return out


def test_the_table_data_is_every_row_and_the_pages_spread_over_confidence(run, site):
    cols = put(site / "data" / "columns.js")
    assert cols["n"] == 6 and cols["run"]["kept"] == 5 and cols["run"]["rejects"] == 1
    rows = put(site / "data" / "rows" / "000000.js")
    keys = [r[0] for r in rows]
    conf = least_confidence(run)
    assert sorted(keys[:5]) == sorted(conf) and keys[5] == "broken-clip"
    got = typed(cols["confidence"], "<f4")
    np.testing.assert_allclose(got[:5], [conf[k] for k in keys[:5]], rtol=1e-6)
    assert np.isnan(got[5])
    reasons = typed(cols["reason"], "<u2")
    assert list(reasons[:5]) == [0] * 5 and cols["reasons"][reasons[5] - 1].startswith("decode: ")
    assert "broken.mp4" in rows[5][3] or "broken" in rows[5][3]
    page = typed(cols["page"], "u1")
    with_page = {k for k, p in zip(keys, page) if p}
    ranked = sorted(conf, key=conf.get)
    assert len(with_page) == 3 and {ranked[0], ranked[-1]} <= with_page  # both ends of the confidence range
    offsets, ids = typed(cols["phrase_offsets"], "<u4"), typed(cols["phrase_ids"], "<u4")
    samples = {s.key: s for tar in sorted((run / "shards").glob("*.tar")) for s in iter_samples(tar)}
    for i, key in enumerate(keys[:5]):
        phrases = [cols["phrases"][j] for j in ids[offsets[i]:offsets[i + 1]]]
        assert phrases == [o["phrase"].lower() for o in samples[key].meta["objects"]]


def test_a_page_holds_the_samples_arrays_and_its_frames(run, site):
    samples = {s.key: s for tar in sorted((run / "shards").glob("*.tar")) for s in iter_samples(tar)}
    pages = sorted((site / "samples").glob("*/*.js"))
    assert len(pages) == 3
    for path in pages:
        p = put(path)
        s = samples[p["key"]]
        assert np.array_equal(typed(p["traj"], "<f4").reshape(s.traj.shape), s.traj.astype(np.float32))
        assert np.array_equal(typed(p["vis"], "u1").reshape(s.vis.shape), s.vis)
        assert p["frames_note"] == "" and (path.parent / p["sheet"]).is_file()
        assert set(o["frame"] for o in s.meta["objects"]) <= set(p["shown"])
        assert all(o["outline"] and len(o["colour"]) == 7 for o in p["objects"])


def test_a_second_call_adds_pages_and_keeps_the_first(run, site, tmp_path):
    out = tmp_path / "site"
    shutil.copytree(site, out)
    cols = put(out / "data" / "columns.js")
    keys = [r[0] for r in put(out / "data" / "rows" / "000000.js")]
    missing = [k for k, p in zip(keys, typed(cols["page"], "u1")) if not p and k != "broken-clip"]
    r = browse(run, out, "--pages", "0", "--keys", missing[0])
    assert r.returncode == 0, r.stderr
    assert "4 sample pages (1 written now)" in r.stdout
    assert typed(put(out / "data" / "columns.js")["page"], "u1").sum() == 4


def test_where_picks_pages_with_a_duckdb_condition(run, tmp_path):
    conf = least_confidence(run)
    cut = float(np.median(list(conf.values())))
    r = browse(run, tmp_path / "site", "--where", f"list_min(confidence) >= {cut}")
    assert r.returncode == 0, r.stderr
    got = {p.stem for p in (tmp_path / "site" / "samples").glob("*/*.js")}
    assert got == {k for k, c in conf.items() if c >= cut}


def test_bad_requests_get_one_line(run, tmp_path):
    r = browse(run, tmp_path / "a", "--where", "no_such_column > 1")
    assert r.returncode == 2 and r.stderr.startswith("pite browse: --where") and r.stderr.count("\n") == 1
    r = browse(run, tmp_path / "b", "--keys", "nope")
    assert r.returncode == 2 and "no kept sample with key 'nope'" in r.stderr
    r = browse(tmp_path, tmp_path / "c")
    assert r.returncode == 2 and "not a run folder" in r.stderr


def test_a_page_whose_video_is_gone_still_draws_its_tracks(run, tmp_path):
    tar = sorted((run / "shards").glob("*.tar"))[0]
    key = next(iter_samples(tar)).key
    done = build_pages((tar, tar.stem, {key: str(tmp_path / "moved.mp4")}, str(tmp_path), 100, 320))
    assert done[0][0] == key and "moved.mp4" in done[0][1]
    page = put(tmp_path / "samples" / tar.stem / f"{key}.js")
    assert page["sheet"] is None and page["frames_note"].startswith("frames not shown") and page["traj"]


# --- in a real browser ------------------------------------------------------------------------------------------


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("no Chromium on PATH: .ci/run installs Debian's chromium package")
    pytest.skip("no Chromium on PATH (apt-get install chromium)")


@pytest.fixture
def served(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()


@pytest.fixture
def page():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium())
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        tab.problems = []
        tab.on("console", lambda m: tab.problems.append(m.text) if m.type == "error" else None)
        tab.on("pageerror", lambda e: tab.problems.append(str(e)))
        yield tab
        browser.close()


def shot(tab, name: str, tmp_path: Path) -> None:
    folder = Path(os.environ.get("PITE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(folder / name), full_page=True)


def body(tab, name: str) -> str:
    return tab.evaluate(f"document.body.dataset.{name}")


def settle(tab) -> None:
    """Wait for the table to redraw after an input (the filters wait 120 ms for typing to stop)."""
    tab.evaluate("document.body.dataset.ready = '0'")
    tab.wait_for_function("document.body.dataset.ready === '1'")


@pytest.mark.slow
def test_the_site_in_chromium_filters_sorts_opens_and_scrubs(run, served, page, tmp_path):
    conf = least_confidence(run)
    page.goto(served + "index.html")
    page.wait_for_selector("body[data-ready='1']")
    assert body(page, "matching") == "6" and page.locator("#rows tbody tr").count() == 6
    ranked = sorted(conf.values())
    cut = (ranked[1] + ranked[2]) / 2  # between two samples, so float32 rounding cannot move a row across
    page.fill("#conf_min", f"{cut:.6f}")
    settle(page)
    assert body(page, "matching") == str(len(ranked) - 2)
    page.fill("#conf_min", "")
    page.select_option("#reason", "rejects")
    settle(page)
    assert body(page, "matching") == "1" and "decode:" in page.locator("#rows tbody tr").inner_text()
    page.select_option("#reason", "kept")
    settle(page)
    page.click("th button[data-sort=confidence]")
    page.click("th button[data-sort=confidence]")  # highest first
    page.wait_for_function("location.hash.includes('dir=desc')")
    assert page.locator("#rows tbody tr td.key").first.inner_text() == max(conf, key=conf.get)
    shot(page, "browse-table.png", tmp_path)

    page.locator("#rows tbody td.key a").first.click()
    page.wait_for_selector("body[data-drawn='1']")
    last = page.evaluate("document.getElementById('scrubber').max")
    page.eval_on_selector("#scrubber", f"e => {{ e.value = {last}; e.dispatchEvent(new Event('input')); }}")
    page.wait_for_function(f"document.body.dataset.frame === '{last}'")
    assert page.locator("#caption mark").count() == page.locator("#objects tbody tr").count() > 0
    shot(page, "browse-sample.png", tmp_path)
    # The first visible point of the first object is drawn in that object's colour at the last shown frame.
    found = page.evaluate("""() => {
      const c = document.getElementById('frame'), ctx = c.getContext('2d');
      const S = PITE.data.sample, T = S.shape[2], K = S.shape[1], t = S.shown[S.shown.length - 1];
      const traj = PITE.typed(S.traj, Float32Array), vis = PITE.typed(S.vis, Uint8Array);
      for (let i = 0; i < S.shape[0]; i++) for (let k = 0; k < K; k++) {
        if (!vis[(i * K + k) * T + t]) continue;
        const at = ((i * K + k) * T + t) * 2;
        const x = Math.round(traj[at] * c.width), y = Math.round(traj[at + 1] * c.height);
        if (x < 0 || y < 0 || x >= c.width || y >= c.height) continue;
        const px = ctx.getImageData(x, y, 1, 1).data, want = parseInt(S.objects[i].colour.slice(1), 16);
        return [px[0], px[1], px[2], want >> 16, (want >> 8) & 255, want & 255];
      }
      return null;
    }""")
    assert found is not None, "no visible point at the last frame"
    assert max(abs(found[j] - found[j + 3]) for j in range(3)) <= 40, found
    assert page.problems == []


@pytest.mark.slow
def test_the_site_opens_from_a_folder_without_a_server(site, page):
    page.goto((site / "index.html").as_uri())
    page.wait_for_selector("body[data-ready='1']")
    assert body(page, "matching") == "6"
    page.locator("#rows tbody td.key a").first.click()
    page.wait_for_selector("body[data-drawn='1']")
    assert page.problems == []
