"""Corpus building: tokens, the paper's tag processing, vocabulary, exclusions, patches, HDF5, archives."""

from __future__ import annotations

import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from training.corpus import archives
from training.corpus.build import build, read_manifest, scan
from training.corpus.debian import download
from training.corpus.patches import fit_scaler, max_energy_start, read_hdf5, window_starts, write_hdf5
from training.corpus.sources import EXCLUDED_PACKAGES, FORBIDDEN_PACKAGES, PRETRAIN_PACKAGES, SOUNDFONTS, SOURCES
from training.corpus.vocabulary import build_vocabulary, multi_hot, normalize, path_tokens, tokenize


def test_tokenize_paths():
    assert tokenize("sounds/BigExplosion_02.ogg") == ["sounds", "Big", "Explosion", "02", "ogg"]
    assert tokenize("en_US_f_Allison/vm-goodbye") == ["en", "US", "f", "Allison", "vm", "goodbye"]
    assert tokenize("HTTPServer-down.wav") == ["HTTP", "Server", "down", "wav"]


def test_path_tokens_drop_packaging_language_and_numbers():
    toks = path_tokens("usr/share/games/supertux2/sounds/kick_fr_03.wav", drop=["supertux"])
    assert [t.lower() for t in toks] == ["kick"]
    assert "allison" not in [t.lower() for t in path_tokens("sounds/en_US_f_Allison/welcome.wav")]


def test_normalize_is_the_papers_processing():
    raw = ["Dogs", "barking", "the", "a", "field-recording", "x", "dog", "Cars2", "glasses"]
    # isalpha before lowercasing drops hyphenated and digit tokens; stopwords and 1-letter tokens go;
    # plurals are singularised; duplicates merged; sorted for reproducibility
    assert normalize(raw) == ["barking", "dog", "glass"]


def test_vocabulary_thresholds_and_order():
    tags = [["common", "rare"]] * 2 + [["common", "mid"]] * 12 + [["everywhere", "common"]] * 6 + [["everywhere"]] * 10
    # 30 sounds; common 20 (66%), everywhere 16, mid 12, rare 2 (< min_count)
    assert build_vocabulary(tags, min_count=10, max_fraction=0.7) == ["common", "everywhere", "mid"]
    assert build_vocabulary(tags, min_count=10, max_fraction=0.6) == ["everywhere", "mid"]
    assert build_vocabulary(tags, min_count=10, keep_n=1) == ["common"]
    m = multi_hot([["mid", "unknown"], []], ["common", "mid"])
    assert m.tolist() == [[0, 1], [0, 0]]


def test_excluded_packages_never_reach_the_corpus(tmp_path):
    assert not set(PRETRAIN_PACKAGES) & set(EXCLUDED_PACKAGES)
    assert {"0ad-data", "musescore-general-soundfont", "avldrums.lv2-soundfont"} <= set(EXCLUDED_PACKAGES)
    assert set(FORBIDDEN_PACKAGES) == {
        "hedgewars-data", "megaglest-data", "widelands-data", "ktuberling-data", "hydrogen-drumkits", "csound-soundfont", "freepats",
        "musescore-general-soundfont-small", "musescore-general-soundfont-lossless",
    }  # fmt: skip
    for pkg in EXCLUDED_PACKAGES:
        with pytest.raises(ValueError, match="never"):
            download([pkg], tmp_path)
    for pkg in (*FORBIDDEN_PACKAGES, "hydrogen", "hydrogen-data", "hydrogen-drumkits-effects"):
        with pytest.raises(ValueError, match="never"):
            download([pkg], tmp_path, allow_excluded=True)
    # an extracted excluded package beside the sources is not scanned...
    for pkg in ("0ad-data", "sound-theme-freedesktop"):
        d = tmp_path / "extracted" / pkg / "usr" / "share" / "sounds"
        d.mkdir(parents=True)
        sf.write(d / "bell.wav", np.zeros(2000, np.float32), 22_050)
    # ...nor are copies of evaluation sounds inside a pretraining package (cube2-data's 0 A.D. folder)
    copied = tmp_path / "extracted" / "cube2-data" / "usr" / "share" / "games" / "cube2" / "packages" / "sounds" / "0ad"
    copied.mkdir(parents=True)
    sf.write(copied / "windgust_11.wav", np.zeros(2000, np.float32), 22_050)
    sf.write(copied.parent / "wind.wav", np.zeros(2000, np.float32), 22_050)
    rows = scan(tmp_path / "extracted", list(SOURCES))
    assert sorted(Path(r["path"]).name for r in rows) == ["bell.wav", "wind.wav"]
    assert {r["source"] for r in rows} == {"sound-theme-freedesktop", "cube2-data"}
    # ...and build() refuses rows from one outright
    bad = [{"path": str(tmp_path / "extracted" / "0ad-data" / "x.wav"), "source": "x", "raw_tags": ["bell"]}]
    with pytest.raises(ValueError, match="excluded packages"):
        build(tmp_path, bad, {})
    assert set(SOUNDFONTS) <= set(PRETRAIN_PACKAGES)


def test_user_manifest_builds_a_corpus(tmp_path):
    rng = np.random.default_rng(0)
    lines = ["path,tags"]
    for i in range(24):
        kind = ["bells ringing", "dogs barking", "rain falling"][i % 3]
        sf.write(
            tmp_path / f"s{i}.wav", 0.1 * rng.standard_normal(int(22_050 * (0.5 + i % 4))).astype(np.float32), 22_050
        )
        lines.append(f"s{i}.wav,{kind} take{i}")
    (tmp_path / "mine.csv").write_text("\n".join(lines) + "\n")
    rows = read_manifest(tmp_path / "mine.csv")
    corpus = build(tmp_path, rows, {}, name="mine", min_count=3, workers=1)
    import json

    vocab = json.loads((corpus / "vocabulary.json").read_text())
    assert sorted(vocab) == ["barking", "bell", "dog", "falling", "rain", "ringing"]
    z = np.load(corpus / "index.npz")
    assert z["labels"].shape == (24, 6) and z["val"].sum() >= 1
    logmel = np.load(corpus / "logmel.npy")
    assert logmel.shape[0] == 96 and logmel.dtype == np.float16
    # the scaler maps every training patch into [0, 1]
    for s in z["max_energy_start"][~z["val"]]:
        scaled = logmel[:, s : s + 96].astype(np.float32) * z["scaler_scale"] + z["scaler_min"]
        assert scaled.min() >= -1e-3 and scaled.max() <= 1 + 1e-3
    # rerunning gives the same vocabulary and split
    corpus2 = build(tmp_path, read_manifest(tmp_path / "mine.csv"), {}, name="mine2", min_count=3, workers=1)
    assert json.loads((corpus2 / "vocabulary.json").read_text()) == vocab
    assert np.array_equal(np.load(corpus2 / "index.npz")["val"], z["val"])


def test_provenance_and_fragments_stay_out_of_the_vocabulary(tmp_path):
    import json

    from training.corpus.build import sound_words
    from training.corpus.vocabulary import drop_reason

    words = frozenset({"bell", "rain", "game", "linux", "explosion"})
    keep = sound_words()
    assert drop_reason("bell", words, keep) is None
    assert drop_reason("game", words, keep) == drop_reason("linux", words, keep) == "provenance"
    assert drop_reason("ab", words, keep) == "fragment"
    assert drop_reason("fantasycore", words, keep) == "not a word"
    assert drop_reason("xylophone", words, keep) is None  # a GM program word: describes the sound by construction
    assert drop_reason("hihat", words, keep) is None  # a sound word the dictionary lacks
    # through build(): the dropped tags never reach the vocabulary, and the corpus card lists them with the reason
    rng = np.random.default_rng(0)
    rows = []
    for i in range(12):
        sf.write(tmp_path / f"s{i}.wav", 0.1 * rng.standard_normal(22_050).astype(np.float32), 22_050)
        what = "bell" if i % 2 else "rain"
        rows.append({"path": str(tmp_path / f"s{i}.wav"), "source": "x", "raw_tags": [what, "game", "ab", "globalmod"]})
    corpus = build(tmp_path, rows, {}, name="c", min_count=3, workers=1, words=words)
    assert json.loads((corpus / "vocabulary.json").read_text()) == ["bell", "rain"]
    dropped = json.loads((corpus / "stats.json").read_text())["dropped_tags"]
    assert dropped == {"fragment": {"ab": 12}, "not a word": {"globalmod": 12}, "provenance": {"game": 12}}


def test_no_package_adds_provenance_tags_to_all_its_sounds():
    from training.corpus.sources import ALL_SOURCES
    from training.corpus.vocabulary import PROVENANCE_WORDS

    extra = {t for _, tags in ALL_SOURCES.values() for t in tags}
    assert not extra & (PROVENANCE_WORDS | {"game", "shooter", "fantasy", "tank", "war", "mod", "linux"})


def test_max_energy_patch():
    spec = np.full((96, 430), -10.0)
    spec[:, 200:260] = 0.0
    start = max_energy_start(spec)
    assert start % 12 == 0 and start <= 200 and start + 96 >= 260
    assert max_energy_start(np.zeros((96, 430))) == 0  # first maximum on ties
    assert len(range(0, 430 - 96 + 1, 12)) == 28


def test_window_starts():
    assert window_starts(430, 100).tolist() == [0, 4]
    assert window_starts(430, 50).tolist() == [0]  # short sound: one window from the start
    w = window_starts(5000, 5000, max_windows=16)
    assert len(w) == 16 and w[0] == 0 and w[-1] == 5000 - 96


def test_scaler_per_time_column():
    rng = np.random.default_rng(0)
    patches = rng.normal(-8, 3, size=(50, 96, 96))
    patches[:, :, 7] += 5
    mn, sc = fit_scaler(iter(patches))
    scaled = patches * sc + mn
    np.testing.assert_allclose(scaled.min(axis=(0, 1)), 0, atol=1e-5)
    np.testing.assert_allclose(scaled.max(axis=(0, 1)), 1, atol=1e-5)
    from sklearn.preprocessing import MinMaxScaler

    ref = MinMaxScaler().fit(patches.reshape(-1, 96))  # the original's orientation: rows are mel bands
    np.testing.assert_allclose(sc, ref.scale_, rtol=1e-5)
    np.testing.assert_allclose(mn, ref.min_, rtol=1e-5, atol=1e-6)


def test_hdf5_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.random((5, 96, 96)).astype(np.float32)
    labels = (rng.random((5, 1000)) < 0.01).astype(np.int16)
    ids = np.array([11, 12, 13, 14, 0])
    data[4] = 0  # a trailing all-zero row, as the original script could leave
    write_hdf5(tmp_path / "spec_tags_top_1000", ids, data, labels)
    import h5py

    with h5py.File(tmp_path / "spec_tags_top_1000") as f:
        assert f["dataset/id"].shape == (5, 1) and f["dataset/id"].dtype == np.int32
        assert f["dataset/data"].dtype == np.float32 and f["dataset/label"].dtype == np.int16
    i2, d2, l2 = read_hdf5(tmp_path / "spec_tags_top_1000")
    assert i2.tolist() == [11, 12, 13, 14]
    np.testing.assert_array_equal(d2, data[:4])
    np.testing.assert_array_equal(l2, labels[:4])


def _rcc(folder: str, files: dict[str, bytes], other: tuple[str, bytes]) -> bytes:
    """A Qt resource bundle (format 3, as Qt's rcc writes it): ``files`` in ``folder`` (the first stored as is, the
    others zlib-compressed as qCompress does) and one more file, ``other``, beside the folder."""
    names, data = b"", b""

    def name(text: str) -> int:
        nonlocal names
        names += struct.pack(">HI", len(text), 0) + text.encode("utf-16-be")
        return len(names) - 6 - 2 * len(text)

    def blob(content: bytes, compressed: bool) -> int:
        nonlocal data
        if compressed:
            content = struct.pack(">I", len(content)) + zlib.compress(content)
        data += struct.pack(">I", len(content)) + content
        return len(data) - 4 - len(content)

    def file_node(file: str, content: bytes, compressed: bool) -> bytes:
        return struct.pack(">IHHHIQ", name(file), int(compressed), 0, 0, blob(content, compressed), 0)

    tree = struct.pack(">IHIIQ", 0, 2, 2, 1, 0)  # node 0, the root: nodes 1 and 2
    tree += struct.pack(">IHIIQ", name(folder), 2, len(files), 3, 0)  # node 1, the folder: nodes 3...
    tree += file_node(*other, False)  # node 2
    for k, (file, content) in enumerate(files.items()):
        tree += file_node(file, content, k > 0)
    head = 24
    offsets = (head + len(data) + len(names), head, head + len(data), 0)  # tree, data, names, flags
    return b"qres" + struct.pack(">IIIII", 3, *offsets) + data + names + tree


def test_archives(tmp_path):
    buf = tmp_path / "w.wav"
    sf.write(buf, np.zeros(1000, np.float32), 8000)
    wav = buf.read_bytes()
    with zipfile.ZipFile(tmp_path / "pak0.pk3", "w") as z:
        z.writestr("sound/weapons/shot.wav", wav)
        z.writestr("textures/wall.png", b"png")
        z.writestr("../../evil.wav", wav)
    title = b'"Splat (docks/canals)". By someone.\x00'
    entry = bytes([len(title)]) + title + wav
    cat = struct.pack("<II", 0x80000008, len(wav)) + entry
    (tmp_path / "sfx.cat").write_bytes(cat)
    pcm = bytes(range(0, 256, 2)) * 2
    lump = struct.pack("<HHI", 3, 11025, len(pcm) + 32) + b"\x80" * 16 + pcm + b"\x80" * 16
    wad = b"IWAD" + struct.pack("<II", 1, 12 + len(lump)) + lump + struct.pack("<II8s", 12, len(lump), b"DSPISTOL")
    (tmp_path / "doom.wad").write_bytes(wad)
    (tmp_path / "res.rcc").write_bytes(_rcc("sounds", {"cow.wav": wav, "moo.wav": wav}, ("icon.png", b"png")))
    n = archives.unpack_all(tmp_path, (".wav",), (".pk3",))
    out = tmp_path / archives.UNPACKED
    assert n == 6
    assert (out / "res" / "sounds" / "cow.wav").read_bytes() == wav  # stored as is
    assert (out / "res" / "sounds" / "moo.wav").read_bytes() == wav  # zlib-compressed in the bundle
    assert not (out / "res" / "icon.png").exists()
    assert (out / "pak0" / "sound" / "weapons" / "shot.wav").exists()
    assert not (tmp_path.parent / "evil.wav").exists()
    assert [p.name for p in (out / "sfx").iterdir()] == ["000 Splat _docks_canals_.wav"]
    x, sr = sf.read(out / "doom" / "pistol.wav")
    assert sr == 11025 and len(x) == len(pcm)


def test_spoken_packages_are_tagged_by_metadata_never_by_the_word_spoken(tmp_path):
    from training.corpus.sources import EVALUATION_PACKAGES, SPEECH_SOURCES

    # the speech packages are opt-in (--speech): the default corpus stays without them, but they are guarded like
    # every pretraining package; KLettres is the `languages` evaluation task and never enters pretraining
    assert not set(SPEECH_SOURCES) & set(SOURCES) and set(SPEECH_SOURCES) <= set(PRETRAIN_PACKAGES)
    assert "klettres-data" in EVALUATION_PACKAGES and "klettres-data" not in PRETRAIN_PACKAGES
    # a syllable file named after what is spoken ("dog.ogg") must not get the tag "dog"
    root = tmp_path / "extracted" / "gcin-voice" / "usr" / "share" / "gcin-voice" / "ogg" / "s00"
    root.mkdir(parents=True)
    sf.write(root / "dog.ogg", np.zeros(2000, np.float32), 22_050)
    rows = scan(tmp_path / "extracted", ["gcin-voice"])
    assert [r["raw_tags"] for r in rows] == [list(SPEECH_SOURCES["gcin-voice"][1])]


def test_a_package_cap_keeps_a_fixed_subset(tmp_path, monkeypatch):
    import training.corpus.build as corpus_mod

    root = tmp_path / "extracted" / "gcin-voice" / "usr" / "share" / "gcin-voice" / "ogg"
    for i in range(12):
        (root / f"s{i:02d}").mkdir(parents=True)
        sf.write(root / f"s{i:02d}" / "3.ogg", np.zeros(2000, np.float32), 22_050)
    monkeypatch.setitem(corpus_mod.MAX_FILES, "gcin-voice", 5)
    first = [r["path"] for r in scan(tmp_path / "extracted", ["gcin-voice"])]
    again = [r["path"] for r in scan(tmp_path / "extracted", ["gcin-voice"])]
    assert len(first) == 5 and first == again == sorted(first)
    assert all(r["raw_tags"][:2] == ["speech", "voice"] for r in scan(tmp_path / "extracted", ["gcin-voice"]))
