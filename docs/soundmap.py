"""Make docs/soundmap.png, the README's picture of `coala-embed map`, with the shipped weights.

Sounds outside the training corpus: 150 FSDD recordings (../shared/data/fsdd), the sounds of Debian's
`sound-icons` and `gnome-audio` packages (downloaded with apt-get, unpacked with dpkg-deb) and the bundled
examples; `coala-embed` embeds them, `coala-embed map` draws them, and headless Chromium (Debian's `chromium`,
through playwright) takes the screenshot with the mouse on the point of HOVER (a file name).

    python docs/soundmap.py [--hover bell.ogg] [--out docs/soundmap.png]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT.parent / "shared" / "data" / "fsdd" / "recordings"
PACKAGES = ("sound-icons", "gnome-audio")


def collect(folder: Path) -> None:
    """The sounds, in one folder per source (the map colours by top-level folder)."""
    digits = folder / "fsdd"
    digits.mkdir(parents=True)
    for f in sorted(FSDD.glob("*.wav"))[::20]:  # 150 of the 3,000: every digit, speaker and several takes
        shutil.copy(f, digits / f.name)
    debs = folder.parent / "debs"
    debs.mkdir()
    for name in PACKAGES:
        subprocess.run(["apt-get", "download", name], cwd=debs, check=True, capture_output=True)
    for deb in debs.glob("*.deb"):
        unpacked = folder.parent / "unpacked" / deb.stem
        unpacked.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(unpacked)], check=True)
        target = folder / deb.stem.split("_")[0]
        target.mkdir()
        for f in unpacked.rglob("*"):
            if f.suffix.lower() in (".wav", ".ogg", ".flac") and f.is_file():
                shutil.copy(f, target / f.name)
    shutil.copytree(ROOT / "examples", folder / "examples")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--hover", default="cembalo-1.", help="the point under the mouse: part of a file name (a harpsichord)"
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "soundmap.png")
    a = p.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="coala-soundmap-"))
    sounds = tmp / "sounds"
    collect(sounds)
    feats, page_file = tmp / "feats.npy", tmp / "map.html"
    cli = [sys.executable, "-m", "coala_embed"]
    subprocess.run([*cli, str(sounds), "-o", str(feats), "-q"], check=True)
    subprocess.run([*cli, "map", str(feats), "-o", str(page_file)], check=True)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        page.goto(page_file.as_uri())
        paths = json.loads(page.locator("#data").text_content())["paths"]
        hits = [i for i, path in enumerate(paths) if a.hover in Path(path).name]
        if not hits:
            raise SystemExit(f"no file name holds {a.hover!r}")
        x, y = page.evaluate(f"[px[{hits[0]}], py[{hits[0]}]]")
        box = page.locator("#map").bounding_box()
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.screenshot(path=str(a.out))
        print(f"{a.out}: {len(paths)} sounds, the mouse on {Path(paths[hits[0]]).name}: "
              f"{page.locator('#tip').inner_text()!r}")  # fmt: skip
        browser.close()


if __name__ == "__main__":
    main()
