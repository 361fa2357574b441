#!/usr/bin/env python
"""Open a sabgal report in headless Chromium and check that it renders.

Usage::

    python scripts/check_report_render.py DIR/report.html [--screenshot shot.png]

Chromium runs with no network, no GPU, no sync and a fresh profile, takes a
full-page screenshot, and the screenshot is checked not to be blank: enough
non-background pixels, enough distinct colours (the figures), and images
really decoded (the page is taller than its text alone). Exit code 0 when it
renders, 1 when it does not, 2 when Chromium is missing or the file is not
there. Install Chromium with ``apt-get install -y chromium`` (Debian/Ubuntu).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         "--disable-extensions", "--mute-audio")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary ($CHROMIUM first), or None."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, out_png: Path, *, width: int = 1280, height: int = 4000,
               timeout_s: float = 120.0) -> None:
    """Render ``html`` with headless Chromium into ``out_png``.

    Raises
    ------
    FileNotFoundError
        When no Chromium binary is found.
    RuntimeError
        When Chromium fails or writes no screenshot (message has its stderr tail).
    """
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("no chromium binary found (apt-get install -y chromium, or set $CHROMIUM)")
    with tempfile.TemporaryDirectory(prefix="sabgal-chromium-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out_png}", "--virtual-time-budget=5000", html.resolve().as_uri()]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"chromium did not finish within {timeout_s:.0f} s") from None
    if not out_png.exists() or out_png.stat().st_size == 0:
        tail = "\n".join((proc.stderr or "").strip().splitlines()[-5:])
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {tail}")


def check_not_blank(png: Path) -> list[str]:
    """Problems with a screenshot (empty list when it looks like a rendered report)."""
    import numpy as np
    from PIL import Image

    with Image.open(png) as im:
        arr = np.asarray(im.convert("RGB"))
    problems = []
    bg = np.median(arr.reshape(-1, 3), axis=0)
    differs = np.abs(arr.astype(int) - bg).sum(axis=-1) > 30
    if differs.mean() < 0.05:
        problems.append(f"only {100 * differs.mean():.1f}% of pixels differ from the background")
    small = arr[::4, ::4].reshape(-1, 3).astype(np.int64) // 8
    n_colours = len(np.unique(small[:, 0] * 1024 + small[:, 1] * 32 + small[:, 2]))
    if n_colours < 200:
        problems.append(f"only {n_colours} distinct colours: no figures rendered?")
    rows_with_content = differs.any(axis=1).mean()
    if rows_with_content < 0.3:
        problems.append(f"content in only {100 * rows_with_content:.0f}% of the rows")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", help="report.html (or a results folder holding one)")
    parser.add_argument("--screenshot", help="where to keep the screenshot (default: a temporary file)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=4000)
    args = parser.parse_args(argv)
    html = Path(args.report)
    if html.is_dir():
        html = html / "report.html"
    if not html.is_file():
        print(f"check_report_render: {html}: no such file", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="sabgal-shot-") as tmp:
        png = Path(args.screenshot) if args.screenshot else Path(tmp) / "report.png"
        try:
            screenshot(html, png, width=args.width, height=args.height)
        except FileNotFoundError as exc:
            print(f"check_report_render: {exc}", file=sys.stderr)
            return 2
        except RuntimeError as exc:
            print(f"check_report_render: {html}: {exc}", file=sys.stderr)
            return 1
        problems = check_not_blank(png)
    if problems:
        print(f"check_report_render: {html}: screenshot looks blank: " + "; ".join(problems), file=sys.stderr)
        return 1
    print(f"check_report_render: {html} renders ({args.width}x{args.height} screenshot"
          + (f" in {png}" if args.screenshot else "") + ")")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
