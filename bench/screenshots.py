"""Screenshots of HTML pages (report.html) in headless Chromium, to look at them as a user's browser shows them.

  .venv/bin/python bench/screenshots.py runs/annotate/demo/report.html --out runs/screenshots [--width 1280]

Needs Chromium (`apt-get install chromium`). Each page is rendered at --width and a tall window, then the blank
rows below the page are cut. Prints JSON: each page's PNG and its size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

# Without the background-networking flags Chromium keeps calling out at start, which this closed network refuses.
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    raise SystemExit("screenshots: no Chromium on PATH (apt-get install chromium)")


def crop_blank_bottom(png: Path, background: int = 255) -> tuple[int, int]:
    """Cut the rows below the page's last non-blank row; returns the new (width, height)."""
    img = Image.open(png).convert("RGB")
    rows = np.nonzero((np.asarray(img) < background - 2).any(axis=(1, 2)))[0]
    bottom = int(rows[-1]) + 16 if len(rows) else img.height
    img.crop((0, 0, img.width, min(bottom, img.height))).save(png)
    return img.width, min(bottom, img.height)


def shoot(page: Path, png: Path, width: int, height: int, browser: str) -> dict:
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pite-chromium-") as profile:
        cmd = [browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png.resolve()}", page.resolve().as_uri()]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"screenshots: {page}: chromium did not finish in 120 s") from None
    if done.returncode != 0 or not png.is_file():
        raise SystemExit(f"screenshots: {page}: chromium failed ({' '.join(done.stderr.split()[-30:])})")
    w, h = crop_blank_bottom(png)
    return {"page": str(page), "png": str(png), "width": w, "height": h, "cut_at_window": h >= height}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("pages", nargs="+", help="HTML files")
    ap.add_argument("--out", required=True, help="folder for the PNGs (named after each page's folder)")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=8000, help="window height: longer pages are cut there")
    args = ap.parse_args(argv)
    browser = chromium()
    shots = []
    for page in map(Path, args.pages):
        if not page.is_file():
            raise SystemExit(f"screenshots: {page}: no such file")
        name = f"{page.parent.name or 'page'}-{page.stem}.png"
        shots.append(shoot(page, Path(args.out) / name, args.width, args.height, browser))
    print(json.dumps({"browser": browser, "shots": shots}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
