"""Adding files to a collection: ``coala-embed --append`` embeds only the new inputs and keeps the old rows as they
are, an interrupted append resumes, mismatched settings and changed files are refused, and ``coala-embed index``
adds the new rows to an existing index (an inverted file keeps its lists) with the exact path's answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import SR, fake_collection, noise

from coala_embed.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _manifest(out):
    return json.loads(out.with_name(out.stem + ".manifest.json").read_text())


def _rows_by_path(out) -> dict[str, np.ndarray]:
    data = np.load(out)
    x = data["embeddings"] if out.suffix == ".npz" else data
    return {e["path"]: x[e["row"]] for e in _manifest(out)["files"] if e["status"] == "ok"}


def _sounds(folder, seeds):
    folder.mkdir(exist_ok=True)
    for i in seeds:
        sf.write(folder / f"s{i}.wav", noise(1.5 + i % 3, seed=i), SR)


def test_append_embeds_only_the_new_files_and_keeps_the_old_rows(tmp_path, weights_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "in"
    _sounds(folder, range(3))
    (folder / "bad.wav").write_bytes(b"not audio")
    out = tmp_path / "f.npy"
    assert _run("in", "-o", out, "--weights", weights_dir, "-q").exit_code == 1  # bad.wav failed
    before = np.load(out)
    _sounds(folder, range(3, 5))
    sf.write(folder / "bad.wav", noise(2.0, seed=7), SR)  # repaired: tried again
    r = _run("in", "-o", out, "--weights", weights_dir, "-q", "--append")
    assert r.exit_code == 0 and "3 of the 6 inputs are already in" in r.output and "(6 rows)" in r.output, r.output
    x, m = np.load(out), _manifest(out)
    np.testing.assert_array_equal(x[:3], before)  # the rows already there, bit for bit
    assert [e["index"] for e in m["files"]] == list(range(6)) and len({e["path"] for e in m["files"]}) == 6
    assert all(e["status"] == "ok" for e in m["files"]) and m["summary"]["appended"] == 3
    fresh = tmp_path / "fresh.npy"
    assert _run("in", "-o", fresh, "--weights", weights_dir, "-q").exit_code == 0
    want, got = _rows_by_path(fresh), _rows_by_path(out)
    assert set(got) == set(want)
    for p in want:
        np.testing.assert_allclose(got[p], want[p], atol=1e-5)
    r = _run(folder.absolute(), "-o", out, "--weights", weights_dir, "-q", "--append")  # the same files, absolute
    assert r.exit_code == 0 and "nothing to add" in r.output and np.load(out).shape == (6, 1152), r.output
    monkeypatch.chdir(folder)  # and spelled from another folder: the same files all the same
    r = _run(".", "-o", out, "--weights", weights_dir, "-q", "--append")
    assert r.exit_code == 0 and "nothing to add" in r.output and np.load(out).shape == (6, 1152), r.output


def test_append_refuses_other_settings_changed_files_and_a_missing_output(tmp_path, weights_dir):
    folder = tmp_path / "in"
    _sounds(folder, range(2))
    out = tmp_path / "f.npy"
    r = _run(folder, "-o", out, "--weights", weights_dir, "-q", "--append")
    assert r.exit_code == 2 and "nothing to append to" in r.output, r.output
    assert _run(folder, "-o", out, "--weights", weights_dir, "-q").exit_code == 0
    before = out.read_bytes()
    _sounds(folder, [5])
    r = _run(folder, "-o", out, "--weights", weights_dir, "-q", "--append", "--readout", "z+max")
    assert r.exit_code == 2 and "clip differs" in r.output and "readout" in r.output, r.output
    r = _run(folder, "-o", out, "--weights", weights_dir, "-q", "--append", "-f")
    assert r.exit_code == 2 and "does not go with -f" in r.output, r.output
    sf.write(folder / "s0.wav", noise(2.5, seed=11), SR)  # changed since it was embedded
    r = _run(folder, "-o", out, "--weights", weights_dir, "-q", "--append")
    assert r.exit_code == 2 and "changed since they were embedded" in r.output and "s0.wav" in r.output, r.output
    assert out.read_bytes() == before


def test_append_to_frames_keeps_every_file_s_frames(tmp_path, weights_dir):
    folder = tmp_path / "in"
    _sounds(folder, range(2))
    out = tmp_path / "f.npz"
    assert _run(folder, "-o", out, "--weights", weights_dir, "-q", "--frames").exit_code == 0
    _sounds(folder, range(2, 4))
    r = _run(folder, "-o", out, "--weights", weights_dir, "-q", "--append")
    assert r.exit_code == 2 and "with --frames" in r.output, r.output
    assert _run(folder, "-o", out, "--weights", weights_dir, "-q", "--append", "--frames").exit_code == 0
    fresh = tmp_path / "fresh.npz"
    assert _run(folder, "-o", fresh, "--weights", weights_dir, "-q", "--frames").exit_code == 0
    a, b = np.load(out), np.load(fresh)
    rows_a = {e["path"]: e for e in _manifest(out)["files"]}
    rows_b = {e["path"]: e for e in _manifest(fresh)["files"]}
    assert a["frame_offsets"][-1] == len(a["frames"]) == len(b["frames"])
    for p, e in rows_a.items():
        f = rows_b[p]
        sa = slice(a["frame_offsets"][e["row"]], a["frame_offsets"][e["row"] + 1])
        sb = slice(b["frame_offsets"][f["row"]], b["frame_offsets"][f["row"] + 1])
        np.testing.assert_allclose(a["frames"][sa], b["frames"][sb], atol=1e-5)
        np.testing.assert_array_equal(a["frame_times"][sa], b["frame_times"][sb])
        assert e["frame_offset"] == a["frame_offsets"][e["row"]]


def test_an_interrupted_append_resumes_without_duplicates(tmp_path, weights_dir, monkeypatch):
    from coala_embed import joining
    from coala_embed.journal import Journal

    folder = tmp_path / "in"
    _sounds(folder, range(2))
    out = tmp_path / "f.npy"
    assert _run(folder, "-o", out, "--weights", weights_dir, "-q").exit_code == 0
    before = out.read_bytes()
    _sounds(folder, range(2, 6))
    real_append = Journal.append
    calls = []

    def dies_after_one_file(self, results):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt
        real_append(self, results)

    args = (folder, "-o", out, "--weights", weights_dir, "-q", "--append", "--batch-size", "1", "--workers", "1")
    with monkeypatch.context() as m:
        m.setattr(Journal, "append", dies_after_one_file)
        assert _run(*args).exit_code == 130
    assert out.read_bytes() == before and (tmp_path / "f.npy.append").exists()
    r = _run(*args)
    assert r.exit_code == 2 and "interrupted --append: add --resume" in r.output, r.output
    with monkeypatch.context() as m:  # the part is complete, the join is interrupted: the next run redoes it
        m.setattr(joining, "append", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
        assert _run(*args, "--resume").exit_code == 130
    assert out.read_bytes() == before
    assert _run(*args).exit_code == 0
    m = _manifest(out)
    assert len(m["files"]) == 6 == len({e["path"] for e in m["files"]}) == np.load(out).shape[0]
    assert not (tmp_path / "f.npy.append").exists()
    fresh = tmp_path / "fresh.npy"
    assert _run(folder, "-o", fresh, "--weights", weights_dir, "-q").exit_code == 0
    want, got = _rows_by_path(fresh), _rows_by_path(out)
    for p in want:
        np.testing.assert_allclose(got[p], want[p], atol=1e-5)


def test_index_takes_the_appended_rows_and_answers_as_the_exact_path(tmp_path, weights_dir, monkeypatch):
    pytest.importorskip("faiss")
    from coala_embed import index

    hashed = []  # rows passed through the digest: extending hashes each row once
    rows_hash = index._rows_hash
    monkeypatch.setattr(index, "_rows_hash", lambda x, h=None: (hashed.append(len(x)), rows_hash(x, h))[1])
    folder = tmp_path / "in"
    _sounds(folder, range(4))
    out = tmp_path / "f.npy"
    assert _run(folder, "-o", out, "--weights", weights_dir, "-q").exit_code == 0
    assert _run("index", out, "--weights", weights_dir, "-q").exit_code == 0
    _sounds(folder, range(4, 7))
    r = _run(folder, "-o", out, "--weights", weights_dir, "-q", "--append")
    assert r.exit_code == 0 and f"`coala-embed index {out}` adds the new ones" in r.output, r.output
    r = _run("neighbours", out, folder / "s0.wav")
    assert r.exit_code == 2 and "add the new rows to it with `coala-embed index" in r.output, r.output
    r = _run("index", out, "--weights", weights_dir, "-q", "--kind", "ivf")
    assert r.exit_code == 2 and "the index is flat; add -f to build it again as ivf" in r.output, r.output
    hashed.clear()
    r = _run("index", out, "--weights", weights_dir, "-q")
    assert r.exit_code == 0 and "3 rows added, 7 in all, flat/flat" in r.output, r.output
    assert sum(hashed) == 7, hashed
    assert _manifest(out)["index"]["digest"] == index.rows_digest(np.load(out))
    for args in (["neighbours", out, folder / "s5.wav", "-k", "6"], ["search", out, "tag1 tag2", "-k", "7"]):
        got = _run(*args, "--weights", weights_dir).output.split()
        want = _run(*args, "--weights", weights_dir, "--exact").output.split()
        assert got[1::2] == want[1::2] and len(got) >= 12, (got, want)
        np.testing.assert_allclose(np.array(got[::2], float), np.array(want[::2], float), atol=2e-3)
    r = _run("index", out, "--weights", weights_dir, "-q")
    assert r.exit_code == 2 and "covers all 7 rows already" in r.output, r.output


@pytest.mark.parametrize("kind", ["ivf", "ivf-sq8"])
def test_an_inverted_file_extended_keeps_its_lists_and_finds_the_new_rows(tmp_path, kind):
    faiss = pytest.importorskip("faiss")
    from coala_embed import index
    from coala_embed.collection import duplicates, group_pairs, load_collection, neighbours

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 128)).astype(np.float32)
    rows = np.abs(centres[rng.integers(0, 40, 6000)] + 0.6 * rng.standard_normal((6000, 128)).astype(np.float32))
    rows[5000:5040] = rows[100:140] + 1e-3  # duplicates across the old and the new rows
    f = tmp_path / "f.npy"
    fake_collection(f, rows[:4000])
    record = index.write(load_collection(f), kind)

    def centroids(ix):
        return faiss.downcast_index(ix.quantizer).reconstruct_n(0, ix.nlist)

    trained = centroids(index.load(load_collection(f)))
    fake_collection(f, rows, index=record)  # 2,000 rows appended after the indexed ones
    coll = load_collection(f)
    with pytest.raises(Exception, match="add the new rows to it"):
        index.load(coll)
    record = index.extend(coll)
    assert record["rows"] == 6000 and record["added"] == 2000 and record["trained_rows"] == 4000
    ix = index.load(coll)
    np.testing.assert_array_equal(centroids(ix), trained)  # no training again
    assert ix.ntotal == 6000
    queries = rng.choice(np.arange(4000, 6000), 100, replace=False)
    _, found = index.knn(ix, coll.z[queries], 10)
    recall = np.mean([len(set(found[k]) & {i for i, _ in neighbours(coll.z, coll.z[q], 10)}) / 10
                      for k, q in enumerate(queries)])  # fmt: skip
    assert recall >= 0.9
    assert group_pairs(len(coll), index.duplicate_pairs(ix, coll.z, 0.99)) == duplicates(coll.z, 0.99)


def test_an_index_whose_rows_changed_is_not_extended(tmp_path):
    pytest.importorskip("faiss")
    from coala_embed import index
    from coala_embed.collection import load_collection

    rows = np.random.default_rng(1).random((300, 64)).astype(np.float32)
    f = tmp_path / "f.npy"
    fake_collection(f, rows[:200])
    record = index.write(load_collection(f), "flat")
    rows[7] += 1.0  # an indexed row rewritten, then rows appended
    fake_collection(f, rows, index=record)
    coll = load_collection(f)
    assert "the first 200 rows of f.npy changed since" in index.not_extendable(coll)
    with pytest.raises(Exception, match="rebuild it with"):
        index.load(coll)
    with pytest.raises(Exception, match="cannot be extended"):
        index.extend(coll)
