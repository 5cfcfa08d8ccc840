"""Seeing a collection: `coala-embed neighbours`, `duplicates` and `map` (the page tested in headless Chromium)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from click.testing import CliRunner

from coala_embed.cli import main
from coala_embed.collection import duplicates, neighbours, project

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WEIGHTS = Path(__file__).resolve().parents[1] / "weights"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def sweep(seconds: float = 3.0, sr: int = 44_100) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(0)
    return (0.3 * np.sin(2 * np.pi * (300 + 200 * t) * t) * np.exp(-t) + 0.05 * rng.standard_normal(len(t))).astype(
        np.float32
    )


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """One sound as WAV, FLAC, OGG and resampled to 48 and 22.05 kHz, two other sounds and the three bundled
    examples, in two folders, embedded with the shipped weights."""
    root = tmp_path_factory.mktemp("collection")
    a, sr = sweep(), 44_100
    (root / "sounds" / "x").mkdir(parents=True)
    (root / "sounds" / "y").mkdir()
    sf.write(root / "sounds/x/a.wav", a, sr)
    sf.write(root / "sounds/x/a.flac", a, sr)
    sf.write(root / "sounds/y/a.ogg", a, sr)
    for rate in (48_000, 22_050):
        sf.write(root / f"sounds/y/a{rate}.wav", soxr.resample(a, sr, rate), rate)
    t = np.arange(3 * sr) / sr
    sf.write(root / "sounds/x/pulse.wav", (0.2 * np.sign(np.sin(2 * np.pi * 110 * t)) * (t % 0.5 < 0.1)), sr)
    sf.write(
        root / "sounds/y/wind.wav", 0.1 * np.random.default_rng(1).standard_normal(3 * sr) * np.sin(2 * t) ** 2, sr
    )
    shutil.copytree(EXAMPLES, root / "sounds" / "examples", ignore=shutil.ignore_patterns("*.md"))
    out = root / "feats.npy"
    r = run("embed", root / "sounds", "-o", out, "--weights", WEIGHTS)
    assert r.exit_code == 0, r.output
    return out


def paths_of(out: str) -> list[str]:
    return [line.split("  ", 1)[1] for line in out.splitlines() if "  " in line]


def test_duplicates_finds_every_reencode_and_nothing_else(collection):
    r = run("duplicates", collection, "--json")
    assert r.exit_code == 0, r.output
    groups = json.loads(r.stdout)
    assert len(groups) == 1, groups
    assert sorted(Path(p).name for p in groups[0]) == ["a.flac", "a.ogg", "a.wav", "a22050.wav", "a48000.wav"]


def test_neighbours_of_a_member_and_of_a_new_file(collection, tmp_path):
    r = run("neighbours", collection, str(collection.parent / "sounds/x/a.wav"), "-k", "4")
    assert r.exit_code == 0, r.output
    near = [Path(p).name for p in paths_of(r.stdout)]
    assert "a.wav" not in near and sorted(near) == ["a.flac", "a.ogg", "a22050.wav", "a48000.wav"]
    sims = [float(line.split()[0]) for line in r.stdout.splitlines()]
    assert sims == sorted(sims, reverse=True) and sims[-1] > 0.98
    # the next files are other sounds, well below the duplicate threshold (the comparison reads z alone)
    r = run("neighbours", collection, str(collection.parent / "sounds/x/a.wav"), "-k", "9")
    assert all(float(line.split()[0]) < 0.9 for line in r.stdout.splitlines()[4:])
    # a file outside the collection is embedded first
    sf.write(tmp_path / "copy.flac", sweep(), 44_100)
    r = run("neighbours", collection, tmp_path / "copy.flac", "-k", "1", "--weights", WEIGHTS, "--device", "cpu")
    assert r.exit_code == 0, r.output
    assert Path(paths_of(r.stdout)[0]).stem.startswith("a")
    r = run("neighbours", collection, tmp_path / "nowhere.wav")
    assert r.exit_code == 2 and "neither a file of feats.npy nor an audio file" in r.output


def test_neighbours_and_duplicates_match_brute_force():
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    x[7] = 2 * x[3]  # same direction: cosine 1
    x[250] = x[3] + 1e-3
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = xn @ xn[3]
    assert [i for i, _ in neighbours(x, x[3], 5)] == list(np.argsort(-sims, kind="stable")[:5])
    assert duplicates(x, 0.999, block=64) == [[3, 7, 250]]


def test_projection_keeps_clusters_apart():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((3, 64)) * 5
    x = np.concatenate([c + rng.standard_normal((40, 64)) for c in centres]).astype(np.float32)
    for method in ("pca", "tsne"):
        xy, used, _ = project(x, method)
        assert used == method and xy.shape == (120, 2)
        means = np.stack([xy[i * 40 : (i + 1) * 40].mean(0) for i in range(3)])
        spread = max(np.linalg.norm(xy[i * 40 : (i + 1) * 40] - means[i], axis=1).mean() for i in range(3))
        gaps = min(np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i))
        assert gaps > 2 * spread, method


def test_map_errors_name_the_problem(collection, tmp_path):
    lone = tmp_path / "lone.npy"
    np.save(lone, np.zeros((2, 1152), np.float32))
    r = run("map", lone, "-o", tmp_path / "m.html")
    assert r.exit_code == 2 and "manifest lone.manifest.json is missing" in r.output
    # rows and manifest that do not belong together
    shutil.copy(collection.with_name("feats.manifest.json"), tmp_path / "short.manifest.json")
    m = json.loads((tmp_path / "short.manifest.json").read_text())
    m["output"] = "short.npy"
    (tmp_path / "short.manifest.json").write_text(json.dumps(m))
    np.save(tmp_path / "short.npy", np.load(collection)[:3])
    r = run("map", tmp_path / "short.npy", "-o", tmp_path / "m.html")
    assert r.exit_code == 2 and "has 3 rows but its manifest lists 10" in r.output
    labels = tmp_path / "labels.csv"
    labels.write_text("file,label\nx.wav,a\n")
    r = run("map", collection, "-o", tmp_path / "m.html", "--labels", labels, "--projection", "pca")
    assert r.exit_code == 2 and "needs the columns 'path' and 'label'" in r.output
    assert not (tmp_path / "m.html").exists()


def test_map_page_holds_every_sound_with_links_and_tags(collection, tmp_path):
    out = tmp_path / "pages" / "map.html"
    out.parent.mkdir()
    labels = tmp_path / "labels.csv"
    labels.write_text("path,label\na.wav,original\na.flac,original\n")
    r = run("map", collection, "-o", out, "--projection", "pca", "--labels", labels, "--png", tmp_path / "map.png")
    assert r.exit_code == 0, r.output
    data = json.loads(out.read_text().split('<script id="data" type="application/json">')[1].split("</script>")[0])
    assert len(data["x"]) == len(data["paths"]) == 10 and data["method"] == "pca"
    assert data["groups"][0] == "(no label)" and "original" in data["groups"]
    assert len(data["tags"]) == 10 and all(len(t) == 5 for t in data["tags"])
    # links are relative to the page and lead to the files
    for d, name in zip(data["dir"], data["ref"]):
        assert (out.parent / data["dirs"][d] / name).is_file()
    assert (tmp_path / "map.png").stat().st_size > 10_000
    assert "http://" not in out.read_text() and "https://" not in out.read_text()  # nothing to fetch


def test_embed_audio_makes_a_self_contained_page(collection, tmp_path):
    out = tmp_path / "map.html"
    assert run("map", collection, "-o", out, "--projection", "pca", "--embed-audio").exit_code == 0
    page = out.read_text()
    assert page.count("data:audio/") + page.count("data:application/") == 10


@pytest.mark.slow
def test_the_page_in_a_real_browser(collection, tmp_path):
    """Headless Chromium (Debian's `chromium`; `.ci/run` installs it) draws every point, shows a point's file on
    hover, filters with the search box and renders a picture that is not blank."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    sync_api = pytest.importorskip("playwright.sync_api")
    if chromium is None:
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    out = collection.parent / "map.html"
    assert run("map", collection, "-o", out, "--projection", "pca").exit_code == 0
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]  # fmt: skip
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=args)
        page = browser.new_page(viewport={"width": 1100, "height": 700})
        requests: list[str] = []
        page.on("request", lambda req: requests.append(req.url))
        page.goto(out.as_uri())
        state = page.evaluate("window.soundMap")
        assert state["points"] == 10 and state["drawn"] == 10 and state["matched"] == 10
        # hover the point that stands furthest from the others (re-encodes of one sound may coincide): the
        # tooltip names its file
        paths = json.loads(page.locator("#data").text_content())["paths"]
        xy = np.array(page.evaluate(f"Array.from({{length: {len(paths)}}}, (_, i) => [px[i], py[i]])"))
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=2) + np.eye(len(xy)) * 1e9
        i = int(gaps.min(axis=1).argmax())
        name = Path(paths[i]).name
        x, y = xy[i]
        box = page.locator("#map").bounding_box()
        page.mouse.move(box["x"] + x, box["y"] + y)
        assert page.evaluate("window.soundMap.hovered") == name
        assert name in page.locator("#tip").inner_text()
        # the search box keeps the matching sounds only
        page.fill("#search", "a48000")
        assert page.evaluate("window.soundMap.matched") == 1
        page.fill("#search", "")
        assert page.evaluate("window.soundMap.matched") == 10
        # a click plays the sound from its relative link
        page.mouse.click(box["x"] + x, box["y"] + y)
        assert page.evaluate("window.soundMap.playing") == name
        shot = tmp_path / "map.png"
        page.screenshot(path=str(shot))
        browser.close()
    assert all(u.startswith("file://") for u in requests), requests
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert pixels.std() > 5 and (pixels < 200).mean() > 0.001  # not blank: points, legend and text drawn
