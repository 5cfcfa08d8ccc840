"""Build the tagged pretraining corpus from Debian packages: download, unpack, render notes, scan and tag,
log-mels with the package's own front-end, split, scaler. Every stage resumes and skips what is done.

    python -m training.corpus [--data DIR] [--smoke]
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import hashlib
import json
import logging
import multiprocessing
import re
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from coala_embed.audio_io import load_audio
from coala_embed.config import FrontendConfig
from coala_embed.errors import AudioError
from coala_embed.files import atomic_write, save_npy, save_npz, write_text
from coala_embed.frontend import log_mel, pad, resample

from ..cli import parser, start
from . import notes
from .debian import download, extract
from .patches import PATCH, fit_scaler, max_energy_start, window_starts
from .sources import (
    ALL_SOUNDFONTS,
    ALL_SOURCES,
    AUDIO_EXTENSIONS,
    DICTIONARY,
    EXCLUDED_DIRS,
    EXCLUDED_PACKAGES,
    FM_SOUNDFONTS,
    MAX_FILES,
    METADATA_PACKAGES,
    PACKAGE_TAGS_ONLY,
    SOUNDFONTS,
    SOURCES,
    SPEECH_SOURCES,
    WIDE_SOURCES,
)
from .vocabulary import build_vocabulary, drop_reason, multi_hot, normalize, path_tokens, read_words, tokenize

log = logging.getLogger(__name__)
MAX_SECONDS = 120.0  # longer files (music) are cut: enough patches, bounded memory
MAX_DESC = 3000  # spoken stamp descriptions kept, so one voice does not dominate
# The corpus's log-mels: the package's front-end with the original's 10-s padding (docs/method.md 1.2); recorded in
# the corpus folder (frontend.json), from which export builds the checkpoint's front-end
CORPUS_FRONTEND = FrontendConfig(pooling="original")


# ---------------------------------------------------------------------------------------------- fetch


# ---------------------------------------------------------------------------------------------- scan
def _tuxpaint_text(audio: Path) -> str:
    stem = re.sub(r"_desc$", "", audio.stem)
    txt = audio.with_name(stem + ".txt")
    if txt.exists():
        first = txt.read_text(errors="replace").splitlines()
        return first[0] if first else ""
    return ""


def _asterisk_transcripts(root: Path) -> dict[str, str]:
    out = {}
    for gz in root.rglob("core-sounds-en.txt.gz"):
        for line in gzip.open(gz, "rt", errors="replace"):
            name, sep, text = line.partition(":")
            if sep and not line.startswith(";"):
                out[name.strip()] = text.strip()
    return out


def _fixed_subset(items: list[dict], n: int) -> list[dict]:
    """At most ``n`` of ``items``, drawn with seed 0 and kept in their order (the same subset on every build)."""
    if len(items) <= n:
        return items
    keep = np.random.default_rng(0).choice(len(items), n, replace=False)
    return [items[i] for i in sorted(keep)]


def scan(extracted: Path, packages: list[str]) -> list[dict]:
    """Rows ``{path, source, raw_tags}`` for every audio file of the pretraining packages."""
    transcripts: dict[str, str] = {}
    for meta in METADATA_PACKAGES:
        if (extracted / meta).exists():
            transcripts.update(_asterisk_transcripts(extracted / meta))
    rows: list[dict] = []
    for pkg in packages:
        root = extracted / pkg
        if not root.exists():
            continue
        extra = list(ALL_SOURCES[pkg][1])
        drop = tokenize(pkg)
        descs = []
        first = len(rows)
        for f in sorted(root.rglob("*")):
            if not f.is_file() or f.suffix.lower() not in AUDIO_EXTENSIONS:
                continue
            rel = str(f.relative_to(root))
            if "/doc/" in rel or set(f.relative_to(root).parts[:-1]) & set(EXCLUDED_DIRS):
                continue
            words: list[str] = []
            if pkg == "tuxpaint-stamps-default":
                if re.search(r"_desc_[a-z]{2,3}(_[A-Z]{2})?$", f.stem):
                    continue  # translations: English only
                words = tokenize(_tuxpaint_text(f))
                if f.stem.endswith("_desc"):
                    words += ["speech", "voice", "description"]
                    descs.append({"path": str(f), "source": pkg, "raw_tags": path_tokens(rel, drop) + words + extra})
                    continue
            elif pkg.startswith("asterisk-core"):
                words = tokenize(transcripts.get(f.stem, ""))
            elif pkg in PACKAGE_TAGS_ONLY:
                rows.append({"path": str(f), "source": pkg, "raw_tags": list(extra)})
                continue
            rows.append({"path": str(f), "source": pkg, "raw_tags": path_tokens(rel, drop) + words + extra})
        if pkg in MAX_FILES:
            rows[first:] = _fixed_subset(rows[first:], MAX_FILES[pkg])
        rows += _fixed_subset(descs, MAX_DESC)
    return rows


# ---------------------------------------------------------------------------------------------- features
def _features(args: tuple[str, FrontendConfig]) -> tuple[np.ndarray | None, dict]:
    path, cfg = args
    try:
        audio, sr = load_audio(path, max_seconds=MAX_SECONDS)
        duration = len(audio) / sr
        if duration < 0.02:
            raise AudioError(f"{path}: shorter than 20 ms")
        audio = resample(audio, sr, cfg.sample_rate)
        peak = float(np.abs(audio).max())
        if peak < 1e-4:
            raise AudioError(f"{path}: silent")
        # The original recipe: clips of up to 10 s padded to 10 s with the dither (docs/method.md 1.2).
        padded = pad(audio, cfg)
        spec = log_mel(padded, cfg).numpy().astype(np.float16)
        signal = 1 + len(audio) // cfg.hop_length
        return spec, {"duration": duration, "sample_rate": sr, "frames": spec.shape[1], "signal_frames": signal}
    except (AudioError, ValueError, RuntimeError) as e:
        return None, {"error": str(e)}


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)  # one process per core already


def compute_features(rows: list[dict], out: Path, workers: int = 2, shard: int = 400) -> None:
    """Log-mel of every row, stored in shards of ``shard`` files (``features/NNNNN.npz``); resumes."""
    from tqdm import tqdm

    cfg = CORPUS_FRONTEND
    out.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(0, len(rows), shard) if not _shard_path(out, rows, i, shard).exists()]
    # "spawn": a forked child of a process whose torch thread pool is already running can deadlock in torch.stft.
    ctx = multiprocessing.get_context("spawn")
    with (
        ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init) as pool,
        tqdm(total=len(rows), desc="log-mels", unit="file") as bar,
    ):
        bar.update(len(rows) - sum(min(shard, len(rows) - i) for i in todo))
        for i in todo:
            chunk = rows[i : i + shard]
            specs, metas = [], []
            for spec, meta in pool.map(_features, [(r["path"], cfg) for r in chunk], chunksize=8):
                specs.append(spec if spec is not None else np.zeros((cfg.n_mels, 0), np.float16))
                metas.append(meta)
                bar.update(1)
            lengths = np.array([s.shape[1] for s in specs])
            arrays = {"logmel": np.concatenate(specs, axis=1), "lengths": lengths, "meta": json.dumps(metas)}
            save_npz(_shard_path(out, rows, i, shard), **arrays)


def _shard_path(out: Path, rows: list[dict], i: int, shard: int) -> Path:
    """Shard files are named by a hash of their paths, so a changed file list never reuses stale features."""
    digest = hashlib.sha1("\n".join(r["path"] for r in rows[i : i + shard]).encode()).hexdigest()[:12]
    return out / f"{i // shard:05d}-{digest}.npz"


def load_features(out: Path, rows: list[dict], shard: int = 400) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """Concatenate the shards: per-row meta, ``logmel [n_mels, F] float16``, row offsets ``[n + 1]``."""
    metas: list[dict] = []
    specs, lengths = [], []
    for i in range(0, len(rows), shard):
        z = np.load(_shard_path(out, rows, i, shard))
        metas += json.loads(str(z["meta"]))
        specs.append(z["logmel"])
        lengths.append(z["lengths"])
    return metas, np.concatenate(specs, axis=1), np.concatenate([[0], np.cumsum(np.concatenate(lengths))])


# ---------------------------------------------------------------------------------------------- split
def split(labels: np.ndarray, test_size: float = 0.1, seed: int = 0) -> np.ndarray:
    """Boolean mask of validation rows: multilabel-stratified 90/10 with a fixed seed, as the original."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

    msss = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=test_size, random_state=seed)
    _, val = next(msss.split(np.zeros(len(labels)), labels))
    mask = np.zeros(len(labels), dtype=bool)
    mask[val] = True
    return mask


def collect_debian(
    data: Path, speech: bool = False, fm_notes: bool = False, wide: bool = False
) -> tuple[list[dict], dict[str, str]]:
    """Download, unpack and scan the Debian sources and render the soundfont notes (with ``speech``, ``fm_notes``
    and ``wide``, the opt-in speech packages, FM soundfont and wider corpus too): rows and versions."""
    debs, extracted = data / "debs", data / "extracted"
    packages = list(SOURCES) + (list(SPEECH_SOURCES) if speech else []) + (list(WIDE_SOURCES) if wide else [])
    versions = download(packages + list(METADATA_PACKAGES), debs)
    for pkg in versions:
        extract(pkg, debs, extracted)
    rows = scan(extracted, [p for p in packages if p in versions])
    soundfonts = {**SOUNDFONTS, **(FM_SOUNDFONTS if fm_notes else {})}
    sf_versions = download(list(soundfonts), debs)
    versions.update(sf_versions)
    for pkg, (_, sf2) in soundfonts.items():
        if pkg in sf_versions and extract(pkg, debs, extracted):
            rows += notes.render(extracted / pkg / sf2, data / "rendered" / pkg, pkg)
    return rows, versions


def dictionary_words(data: Path) -> frozenset[str]:
    """The English word list that decides which tags may enter the vocabulary (``sources.DICTIONARY``)."""
    pkg, rel = DICTIONARY
    download([pkg], data / "debs")
    root = extract(pkg, data / "debs", data / "extracted", unpack=False)
    if root is None or not (root / rel).exists():
        raise SystemExit(f"cannot download {pkg}; run `apt-get update` first")
    return read_words(root / rel)


def sound_words() -> frozenset[str]:
    """Tags that describe a sound by construction: the words of the General MIDI program and family names."""
    return frozenset(normalize(t for name in (*notes.GM_PROGRAMS, *notes.GM_FAMILIES) for t in tokenize(name)))


def read_manifest(path: Path) -> list[dict]:
    """A user's own collection: a CSV with columns ``path`` and ``tags`` (free text or space-separated
    tags; processed exactly as the Debian sounds' raw tags) and optionally ``source``. Relative paths are
    read from the CSV's folder."""
    rows = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            p = Path(r["path"])
            p = p if p.is_absolute() else path.parent / p
            rows.append({"path": str(p), "source": r.get("source") or path.stem, "raw_tags": tokenize(r["tags"])})
    return rows


def assign_tags(rows: list[dict], words: frozenset[str] | None) -> dict[str, dict[str, int]]:
    """Set each row's ``tags`` from its ``raw_tags`` (normalised; with ``words``, tags that are not words,
    fragments and provenance words dropped); return the dropped tags' counts by reason."""
    keep = sound_words()
    dropped: dict[str, dict[str, int]] = {}
    for r in rows:
        r["tags"] = []
        for t in normalize(r["raw_tags"]):
            reason = drop_reason(t, words, keep) if words is not None else None
            if reason is None:
                r["tags"].append(t)
            else:
                dropped.setdefault(reason, {}).setdefault(t, 0)
                dropped[reason][t] += 1
    return dropped


def write_manifest(path: Path, rows: list[dict], val: np.ndarray, vocabulary: set[str]) -> None:
    """``manifest.csv``: one line per sound with its source, split, raw tags and vocabulary tags."""

    def write(tmp: Path) -> None:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "source", "duration", "sample_rate", "split", "raw_tags", "tags"])
            for r, v in zip(rows, val):
                w.writerow([r["path"], r["source"], f"{r['duration']:.3f}", r["sample_rate"], "val" if v else "train",
                            " ".join(r["raw_tags"]), " ".join(t for t in r["tags"] if t in vocabulary)])  # fmt: skip

    atomic_write(path, write)


def build(
    data: Path,
    rows: list[dict],
    versions: dict[str, str],
    name: str = "corpus",
    min_count: int = 10,
    workers: int = 2,
    words: frozenset[str] | None = None,
) -> Path:
    """Tags, vocabulary, log-mels, split and scaler for ``rows``; return the corpus folder ``data/name``.

    With ``words`` (a dictionary), tags that are not words, fragments and provenance words are dropped before the
    vocabulary is built (``tags.drop_reason``); the corpus card (``stats.json``) lists them with their reason.
    """
    t0 = time.time()
    excluded = [r["path"] for r in rows if any(f"/{pkg}/" in r["path"] for pkg in EXCLUDED_PACKAGES)]
    if excluded:
        raise ValueError(f"{len(excluded)} files of excluded packages, e.g. {excluded[0]}")
    corpus = data / name
    corpus.mkdir(parents=True, exist_ok=True)
    dropped = assign_tags(rows, words)
    vocab = build_vocabulary([r["tags"] for r in rows], min_count=min_count)
    vset = set(vocab)
    rows = [r for r in rows if any(t in vset for t in r["tags"])]
    log.info("%d sounds with tags, vocabulary %d", len(rows), len(vocab))
    compute_features(rows, corpus / "features", workers=workers)
    metas, logmel, offsets = load_features(corpus / "features", rows)
    ok = [i for i, m in enumerate(metas) if "error" not in m]
    for m in metas:
        if "error" in m:
            log.warning("skipped %s", m["error"])
    rows = [dict(rows[i], **metas[i], offset=int(offsets[i])) for i in ok]
    labels = multi_hot([r["tags"] for r in rows], vocab)
    has_tag = labels.sum(axis=1) > 0
    rows, labels = [r for r, h in zip(rows, has_tag) if h], labels[has_tag]
    val = split(labels)
    # Scaler on the training split's max-energy patches only (docs/method.md 1.5).
    starts = [
        r["offset"] + max_energy_start(logmel[:, r["offset"] : r["offset"] + r["frames"]].astype(np.float32))
        for r in rows
    ]
    train_idx = np.flatnonzero(~val)

    # Fitted over both training modes' patches (max-energy and multi-patch windows), so both lie in [0, 1].
    def train_patches():
        for i in train_idx:
            r = rows[i]
            for s in [starts[i] - r["offset"], *window_starts(r["frames"], r["signal_frames"])]:
                yield logmel[:, r["offset"] + s : r["offset"] + s + PATCH].astype(np.float32)[None]

    scaler_min, scaler_scale = fit_scaler(train_patches())
    save_npy(corpus / "logmel.npy", logmel)
    save_npz(
        corpus / "index.npz",
        offset=np.array([r["offset"] for r in rows]),
        frames=np.array([r["frames"] for r in rows]),
        signal_frames=np.array([r["signal_frames"] for r in rows]),
        max_energy_start=np.array(starts),
        labels=labels,
        val=val,
        scaler_min=scaler_min,
        scaler_scale=scaler_scale,
    )
    write_text(corpus / "vocabulary.json", json.dumps(vocab, indent=0) + "\n")
    write_text(corpus / "frontend.json", json.dumps(dataclasses.asdict(CORPUS_FRONTEND), indent=1) + "\n")

    write_manifest(corpus / "manifest.csv", rows, val, vset)
    stats = corpus_stats(rows, labels, vocab, versions, time.time() - t0)
    # The card's list of dropped tags: those that would otherwise have been frequent enough for the vocabulary.
    stats["dropped_tags"] = {
        reason: dict(sorted(((t, n) for t, n in counts.items() if n >= min_count), key=lambda x: (-x[1], x[0])))
        for reason, counts in sorted(dropped.items())
    }
    write_text(corpus / "stats.json", json.dumps(stats, indent=2) + "\n")
    log.info("corpus: %s", json.dumps({k: v for k, v in stats.items() if k != "sources"}))
    return corpus


def corpus_stats(rows, labels, vocab, versions, seconds) -> dict:
    per: dict[str, dict] = {}
    for r in rows:
        s = per.setdefault(r["source"], {"files": 0, "hours": 0.0})
        s["files"] += 1
        s["hours"] += r["duration"] / 3600
    for src, s in per.items():
        s["hours"] = round(s["hours"], 3)
        s["version"] = versions.get(src, "")
        lic = ALL_SOURCES.get(src, ALL_SOUNDFONTS.get(src, ("?",)))[0]
        s["licence"] = lic
    windows = sum(len(window_starts(r["frames"], r["signal_frames"])) for r in rows)
    return {
        "sounds": len(rows),
        "hours": round(sum(r["duration"] for r in rows) / 3600, 2),
        "max_energy_patches": len(rows),
        "multi_patch_windows": int(windows),
        "vocabulary": len(vocab),
        "tags_per_sound": round(float(labels.sum(axis=1).mean()), 2),
        "build_seconds": round(seconds),
        "sources": per,
    }


def main(argv: list[str] | None = None) -> int:
    p = parser(__doc__)
    p.add_argument("--manifest", type=Path, help="build from your own CSV (path, tags) instead of the Debian sources")
    p.add_argument("--smoke", action="store_true", help="a tiny generated collection, through the --manifest path")
    p.add_argument("--name", default="corpus", help="corpus folder name inside the data folder")
    p.add_argument("--min-count", type=int, default=10, help="a tag must be in at least this many sounds")
    p.add_argument("--hdf5", action="store_true", help="also write the original HDF5 layout (train and validation)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--speech", action="store_true", help="add the opt-in speech packages (training/corpus/sources.py)")
    p.add_argument(
        "--fm-notes", action="store_true", help="add notes of the opt-in FM soundfont (training/corpus/sources.py)"
    )
    p.add_argument(
        "--wide", action="store_true", help="add the opt-in wider corpus (training/corpus/sources.py WIDE_SOURCES)"
    )
    a, data = start(p, argv)
    words = None
    versions: dict[str, str] = {}  # Debian package versions; none for a generated or listed collection
    if a.smoke:
        from .smoke import make_collection

        rows, min_count = read_manifest(make_collection(data / "smoke-audio")), 2
    elif a.manifest:
        rows, min_count = read_manifest(a.manifest), a.min_count
    else:
        rows, versions = collect_debian(data, speech=a.speech, fm_notes=a.fm_notes, wide=a.wide)
        min_count = a.min_count
        words = dictionary_words(data)
    corpus = build(data, rows, versions, name=a.name, min_count=min_count, workers=a.workers, words=words)
    if a.hdf5:
        export_hdf5(corpus)
    return 0


def export_hdf5(corpus: Path) -> tuple[Path, Path]:
    """Write the corpus's max-energy patches, scaled, in the authors' layout: ``train.h5`` and ``val.h5``."""
    from .patches import write_hdf5

    z = np.load(corpus / "index.npz")
    logmel = np.load(corpus / "logmel.npy", mmap_mode="r")
    starts = z["max_energy_start"]
    data = np.stack([logmel[:, s : s + PATCH] for s in starts]).astype(np.float32) * z["scaler_scale"] + z["scaler_min"]
    ids = np.arange(1, len(starts) + 1)
    out = []
    for name, mask in (("train.h5", ~z["val"]), ("val.h5", z["val"])):
        write_hdf5(corpus / name, ids[mask], data[mask], z["labels"][mask])
        out.append(corpus / name)
    return out[0], out[1]


if __name__ == "__main__":
    sys.exit(main())
