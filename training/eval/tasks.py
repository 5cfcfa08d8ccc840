"""The five held-out evaluation tasks, built from scratch on any machine (none of it enters pretraining).

* ``digits``: spoken digits (FSDD, ``../shared/data/fsdd``), 10 classes. Official split: takes 0-4 test;
  takes 5-19 validation (900 clips); takes 20-49 train. Also leave-one-speaker-out in ``evaluate.py``.
* ``events``: the sounds of 0ad-data (in a zip inside the package), 9 classes from their folders;
  variants of one sound (same stem, other number) stay on one side; test / validation / train = folds
  0 / 1 / 2-4 of a stratified group 5-fold split (seed 0).
* ``instruments``: GM notes rendered with fluidsynth from musescore-general-soundfont, 16 GM families;
  split by program, so test instruments are unseen: per family 2 programs test, 2 validation, 4 train.
* ``drums``: GM drum notes, 29 classes (the GM percussion names: bass drum, snare drum, closed / pedal / open
  hihat, crash / ride / china / splash cymbal, conga, bongo, ...). Train and validation come from the same
  soundfont's drum kits, split by kit family (Standard, Electronic, TR-808 and Orchestra kits train; Power and
  Brush kits validation); the test split is two multi-sampled acoustic kits of another source, the AVL Drumkits
  (avldrums.lv2-soundfont: Black Pearl and Red Zeppelin), so test kits are unseen and unlike the training ones.
* ``languages``: KLettres (klettres-data) letters and syllables read aloud, one voice per language folder, 20 classes
  (speech: language and speaker identification); stratified 50/25/25 train/validation/test (seed 0).

Each task is a folder ``DATA/tasks/<name>/`` with ``task.csv`` (path, label, split, group) and ``card.json``.

    python -m training.eval.tasks [--data DIR] [--fsdd PATH]
    python -m training.eval.tasks --smoke      # tiny generated tasks for run.sh --smoke and the tests
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import soundfile as sf

from coala_embed.files import atomic_write, write_bytes, write_text

from ..cli import parser, start
from ..corpus.debian import download, extract
from ..corpus.notes import GM_DRUMS, GM_FAMILIES, GM_PROGRAMS, render_notes

log = logging.getLogger(__name__)
TASKS = ("digits", "events", "instruments", "drums", "languages")
# Drum kits of MuseScore_General (bank 128 presets) by split: whole kit families are held out
DRUM_KITS = {
    "train": {
        0: "Standard",
        1: "Standard 1",
        2: "Standard 2",
        3: "Standard 3",
        4: "Standard 4",
        5: "Standard 5",
        6: "Standard 6",
        7: "Standard 7",
        24: "Electronic",
        25: "TR-808",
        48: "Orchestra Kit",
    },
    "val": {16: "Power", 17: "Power 1", 18: "Power 2", 19: "Power 3", 40: "Brush", 41: "Brush 1", 42: "Brush 2"},
}
DEFAULT_FSDD = Path(__file__).resolve().parents[3] / "shared" / "data" / "fsdd" / "recordings"

# 0ad folder prefix (below audio/) -> class
EVENT_CLASSES = {
    "attack/weapon": "weapon", "attack/fire": "weapon", "attack/siege": "weapon",
    "attack/impact": "impact", "attack/destruction": "impact",
    "actor/human/death": "death", "actor/mounted/death": "death",
    "actor/fauna": "fauna",
    "actor/singlesteps": "footsteps", "actor/human/movement": "footsteps", "actor/mounted/movement": "footsteps",
    "voice": "voice",
    "resource": "gathering_construction",
    "interface": "interface",
    "ambient": "ambient",
}  # fmt: skip


def write_task(folder: Path, rows: list[dict], card: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["path", "label", "split", "group"])
            w.writeheader()
            w.writerows(rows)

    atomic_write(folder / "task.csv", write)
    counts = {
        s: dict(sorted(Counter(r["label"] for r in rows if r["split"] == s).items())) for s in ("train", "val", "test")
    }
    hours = sum(sf.info(r["path"]).duration for r in rows) / 3600
    card.update(files=len(rows), hours=round(hours, 3), classes=sorted({r["label"] for r in rows}), counts=counts)
    write_text(folder / "card.json", json.dumps(card, indent=1) + "\n")


def read_task(folder: Path) -> list[dict]:
    with open(folder / "task.csv") as f:
        return list(csv.DictReader(f))


def build_digits(data: Path, fsdd: Path) -> Path:
    out = data / "tasks" / "digits"
    if (out / "task.csv").exists():
        return out
    if not fsdd.is_dir():
        raise SystemExit(f"FSDD recordings not found at {fsdd}; pass --fsdd")
    rows = []
    for f in sorted(fsdd.glob("*.wav")):
        digit, speaker, take = f.stem.split("_")
        split = "test" if int(take) <= 4 else ("val" if int(take) <= 19 else "train")
        rows.append({"path": str(f), "label": digit, "split": split, "group": speaker})
    card = {"task": "digits", "source": "Free Spoken Digit Dataset (CC BY-SA 4.0), commit 26eb9aa",
            "split_rule": "takes 0-4 test (official), 5-19 validation, 20-49 train; group = speaker"}  # fmt: skip
    write_task(out, rows, card)
    return out


def _event_class(member: str) -> str | None:
    rel = member.split("audio/", 1)[-1]
    for prefix, label in EVENT_CLASSES.items():
        if rel.startswith(prefix + "/"):
            return label
    return None


def _evaluation_package(data: Path, pkg: str) -> tuple[str, Path]:
    """Download and unpack an evaluation package into ``eval-extracted/`` (apart from the pretraining sources);
    return its version and folder."""
    version = download([pkg], data / "debs", allow_excluded=True).get(pkg, "")
    root = extract(pkg, data / "debs", data / "eval-extracted", unpack=False)
    if root is None:
        raise SystemExit(f"cannot download {pkg}; run `apt-get update` first")
    return version, root


def build_events(data: Path) -> Path:
    from sklearn.model_selection import StratifiedGroupKFold

    out = data / "tasks" / "events"
    if (out / "task.csv").exists():
        return out
    version, root = _evaluation_package(data, "0ad-data")
    audio = out / "audio"
    rows = []
    for z in sorted(root.rglob("*.zip")):
        with zipfile.ZipFile(z) as zf:
            for info in zf.infolist():
                name = info.filename
                if not name.lower().endswith((".ogg", ".wav")) or "/audio/" not in "/" + name:
                    continue
                label = _event_class(name)
                if label is None:
                    continue
                target = audio / name.split("audio/", 1)[-1]
                if not target.exists():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    write_bytes(target, zf.read(info))
                stem = re.sub(r"[_\-\s]*\d+$", "", Path(name).stem)
                rows.append({"path": str(target), "label": label, "split": "", "group": f"{Path(name).parent}/{stem}"})
    labels = [r["label"] for r in rows]
    groups = [r["group"] for r in rows]
    folds = list(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(np.zeros(len(rows)), labels, groups))
    for r in rows:
        r["split"] = "train"
    for i in folds[0][1]:
        rows[i]["split"] = "test"
    for i in folds[1][1]:
        rows[i]["split"] = "val"
    card = {"task": "events", "source": f"0ad-data {version} (CC BY-SA 3.0)",
            "split_rule": "StratifiedGroupKFold(5, seed 0) over groups = folder + stem without its number: "
                          "fold 0 test, fold 1 validation, folds 2-4 train",
            "class_map": EVENT_CLASSES}  # fmt: skip
    write_task(out, rows, card)
    return out


def _evaluation_soundfont(data: Path) -> tuple[str, Path]:
    """musescore-general-soundfont (an evaluation package): its version and its soundfont file."""
    version, root = _evaluation_package(data, "musescore-general-soundfont")
    sf_files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".sf2", ".sf3"))
    if not sf_files:
        raise SystemExit(f"no soundfont in {root}")
    return version, sf_files[0]


def _audible_notes(soundfont: Path, notes: list[dict], folder: Path, prefix: str) -> list[tuple[Path, dict]]:
    """Render ``notes`` into ``folder`` and keep those that sound: a program or kit without a sample for a
    pitch renders silence."""
    out = []
    for path, n in zip(render_notes(soundfont, notes, folder, prefix), notes):
        audio, _ = sf.read(path, dtype="float32")
        if np.abs(audio).max() >= 1e-3:
            out.append((path, n))
    return out


def build_instruments(data: Path) -> Path:
    out = data / "tasks" / "instruments"
    if (out / "task.csv").exists():
        return out
    version, soundfont = _evaluation_soundfont(data)
    rng = np.random.default_rng(0)
    split_of = {}
    for fam in range(16):
        progs = rng.permutation(np.arange(fam * 8, fam * 8 + 8))
        for k, p in enumerate(progs):
            split_of[int(p)] = "test" if k < 2 else ("val" if k < 4 else "train")
    notes = [{"channel": 0, "program": p, "pitch": pitch, "velocity": vel}
             for p in range(128) for pitch in range(36, 85, 4) for vel in (80, 120)]  # fmt: skip
    rows = []
    for path, n in _audible_notes(soundfont, notes, out / "audio", "note"):
        rows.append({"path": str(path), "label": GM_FAMILIES[n["program"] // 8].replace(" ", "_"), "split": split_of[n["program"]],
                     "group": GM_PROGRAMS[n["program"]]})  # fmt: skip
    card = {"task": "instruments", "source": f"musescore-general-soundfont {version} "
            f"({soundfont.name}, MIT), rendered with fluidsynth",  # fmt: skip
            "split_rule": "by GM program: per family 2 programs test, 2 validation, 4 train (seed 0); "
                          "pitches 36-84 step 4, velocities 80 and 120, 2 s notes in 3 s clips"}  # fmt: skip
    write_task(out, rows, card)
    return out


DRUM_TEST_PACKAGE = "avldrums.lv2-soundfont"  # an evaluation package: never part of pretraining


def build_drums(data: Path) -> Path:
    out = data / "tasks" / "drums"
    if (out / "task.csv").exists():
        return out
    version, soundfont = _evaluation_soundfont(data)
    kits = [(split, kit, name) for split, named in DRUM_KITS.items() for kit, name in named.items()]
    notes = [{"channel": 9, "program": kit, "pitch": pitch, "velocity": vel}
             for _, kit, _ in kits for pitch in GM_DRUMS for vel in (60, 90, 120)]  # fmt: skip
    split_of = {kit: (split, name) for split, kit, name in kits}
    rows = []
    for path, n in _audible_notes(soundfont, notes, out / "audio", "drum"):
        split, name = split_of[n["program"]]
        rows.append({"path": str(path), "label": GM_DRUMS[n["pitch"]].replace(" ", "_"), "split": split, "group": name})
    # The test kits: each AVL soundfont holds one kit as its preset 0 (bank 0), played on an ordinary channel
    avl_version, avl_root = _evaluation_package(data, DRUM_TEST_PACKAGE)
    avl_kits = sorted(p for p in avl_root.rglob("*.sf2") if not p.is_symlink())  # usr/lib/lv2 links them
    if not avl_kits:
        raise SystemExit(f"no soundfont in {avl_root}")
    for kit in avl_kits:
        name = kit.stem.replace("_LV2", "").replace("_", " ")
        notes = [  # five velocities: the AVL kits hold five velocity layers per piece
            {"channel": 0, "program": 0, "pitch": pitch, "velocity": vel}
            for pitch in GM_DRUMS
            for vel in (40, 60, 80, 100, 120)
        ]
        for path, n in _audible_notes(kit, notes, out / "audio" / kit.stem, "drum"):
            rows.append(
                {"path": str(path), "label": GM_DRUMS[n["pitch"]].replace(" ", "_"), "split": "test", "group": name}
            )
    card = {"task": "drums", "source": f"musescore-general-soundfont {version} ({soundfont.name}, MIT), drum kits "
            f"(bank 128); {DRUM_TEST_PACKAGE} {avl_version} (CC-BY-SA-3.0, AVL Drumkits by Glen MacArthur: "
            f"{', '.join(k.name for k in avl_kits)}); rendered with fluidsynth",
            "split_rule": "MuseScore kits by kit family: Power and Brush validation, the rest train; the AVL "
                          "acoustic kits test; GM drum notes 35-81 (those a kit sounds), velocities 60, 90 and 120 "
                          "(AVL kits: 40, 60, 80, 100 and 120), 2 s notes in 3 s clips",
            "kits": {**{split: list(named.values()) for split, named in DRUM_KITS.items()},
                     "test": [k.stem for k in avl_kits]}}  # fmt: skip
    write_task(out, rows, card)
    return out


def build_languages(data: Path) -> Path:
    from sklearn.model_selection import train_test_split

    out = data / "tasks" / "languages"
    if (out / "task.csv").exists():
        return out
    version, root = _evaluation_package(data, "klettres-data")
    files = sorted(root.rglob("*.ogg"))  # usr/share/klettres/<language>/<alpha|syllab>/<what>.ogg
    labels = [f.parent.parent.name for f in files]
    idx = np.arange(len(files))
    rest, test = train_test_split(idx, test_size=0.25, stratify=labels, random_state=0)
    train, val = train_test_split(rest, test_size=1 / 3, stratify=[labels[i] for i in rest], random_state=0)
    split = {**{int(i): "train" for i in train}, **{int(i): "val" for i in val}, **{int(i): "test" for i in test}}
    rows = [
        {"path": str(f), "label": lab, "split": split[i], "group": f.parent.name}
        for i, (f, lab) in enumerate(zip(files, labels))
    ]
    card = {"task": "languages", "source": f"klettres-data {version} (GPL-2+): letters and syllables read aloud",
            "split_rule": "stratified by language: 50 % train, 25 % validation, 25 % test (seed 0); "
                          "one voice per language folder, so the task is language and speaker identification"}  # fmt: skip
    write_task(out, rows, card)
    return out


def build_all(data: Path, fsdd: Path = DEFAULT_FSDD) -> dict[str, Path]:
    return {
        "digits": build_digits(data, fsdd),
        "events": build_events(data),
        "instruments": build_instruments(data),
        "drums": build_drums(data),
        "languages": build_languages(data),
    }


def make_smoke_tasks(data: Path, seed: int = 1) -> None:
    """One small classification task per name in ``TASKS`` under ``data/tasks``, with train / val / test splits."""
    from ..corpus.smoke import KINDS, SR, sound

    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    for t, task in enumerate(TASKS):
        folder = data / "tasks" / task
        if (folder / "task.csv").exists():
            continue
        (folder / "audio").mkdir(parents=True, exist_ok=True)
        rows = []
        for k, kind in enumerate(kinds[t : t + 3]):
            for i in range(15):
                path = folder / "audio" / f"{k}_{i:02d}.wav"
                sf.write(path, sound(kind, rng), SR)
                split = "test" if i < 3 else ("val" if i < 6 else "train")
                rows.append({"path": str(path), "label": kind, "split": split, "group": str(i)})
        write_task(
            folder,
            rows,
            {"task": task, "source": "generated (smoke)", "split_rule": "3 test, 3 val, 9 train per class"},
        )


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--fsdd", type=Path, default=DEFAULT_FSDD, help="FSDD recordings folder")
    p.add_argument("--smoke", action="store_true", help="small generated tasks (for run.sh --smoke and the tests)")
    a, data = start(p, argv)
    if a.smoke:
        make_smoke_tasks(data)
        return 0
    for name, folder in build_all(data, a.fsdd).items():
        card = json.loads((folder / "card.json").read_text())
        print(name, card["files"], "files", card["hours"], "h", len(card["classes"]), "classes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
