"""The approximate-neighbour index (the optional extra ``index``): the same answers as the exact path on a small
collection, near-duplicate groups equal to the exact ones on a planted set, stale indexes refused, and every
command working without FAISS."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from conftest import fake_collection, noise

from coala_embed.cli import main


def _run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def feats(tmp_path, weights_dir):
    folder = tmp_path / "sounds"
    folder.mkdir()
    for i in range(8):
        sf.write(folder / f"s{i}.wav", noise(2.0, seed=i % 5), 22_000)  # s5..s7 are copies of s0..s2
    out = tmp_path / "feats.npy"
    assert _run(folder, "-o", out, "--weights", weights_dir, "-q").exit_code == 0
    return out


def test_indexed_commands_answer_as_the_exact_path(feats, weights_dir):
    pytest.importorskip("faiss")
    exact = {
        "neighbours": _run("neighbours", feats, "s0.wav", "-k", "4", "--weights", weights_dir, "--exact").output,
        "duplicates": _run("duplicates", feats, "--json", "--exact").output,
        "search": _run("search", feats, "tag1 tag2", "-k", "5", "--weights", weights_dir, "--exact").output,
    }
    r = _run("index", feats, "--weights", weights_dir, "-q")
    assert r.exit_code == 0 and "8 rows, flat/flat" in r.output, r.output
    record = json.loads(feats.with_name("feats.manifest.json").read_text())["index"]
    assert record["rows"] == 8 and set(record["files"]) == {"z", "projection"}
    indexed = {
        "neighbours": _run("neighbours", feats, "s0.wav", "-k", "4", "--weights", weights_dir).output,
        "duplicates": _run("duplicates", feats, "--json").output,
        "search": _run("search", feats, "tag1 tag2", "-k", "5", "--weights", weights_dir).output,
    }
    assert json.loads(indexed["duplicates"]) == json.loads(exact["duplicates"]) and json.loads(exact["duplicates"])
    for cmd in ("neighbours", "search"):  # the same scores in the same order; copies (equal scores) may swap
        got = [line.split() for line in indexed[cmd].splitlines()]
        want = [line.split() for line in exact[cmd].splitlines()]
        assert len(got) == len(want) > 0, cmd
        np.testing.assert_allclose([float(g[0]) for g in got], [float(w[0]) for w in want], atol=2e-3)
        exact_score = {w[1]: float(w[0]) for w in want}
        assert all(abs(exact_score[path] - float(score)) < 2e-3 for score, path in got), cmd
    assert _run("index", feats, "--weights", weights_dir, "-q").exit_code == 2  # exists: needs -f


def test_a_stale_index_is_refused_with_the_way_to_rebuild_it(feats, weights_dir, tmp_path):
    pytest.importorskip("faiss")
    assert _run("index", feats, "--no-search", "-q").exit_code == 0
    sf.write(tmp_path / "sounds" / "new.wav", noise(2.0, seed=9), 22_000)
    assert _run(tmp_path / "sounds", "-o", feats, "--weights", weights_dir, "-q", "-f").exit_code == 0  # 9 rows now
    for args in (["neighbours", feats, "s0.wav"], ["duplicates", feats]):
        r = _run(*args)
        assert r.exit_code == 2 and "stale" in r.output and "coala-embed index" in r.output, r.output
        assert _run(*args, "--exact").exit_code == 0
    assert _run("index", feats, "--no-search", "-q", "-f").exit_code == 0
    assert _run("neighbours", feats, "s0.wav").exit_code == 0


def test_an_inverted_file_finds_the_neighbours_and_every_planted_duplicate(tmp_path):
    pytest.importorskip("faiss")
    from coala_embed import index
    from coala_embed.collection import duplicates, group_pairs, load_collection

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 256)).astype(np.float32)
    rows = centres[rng.integers(0, 40, 6000)] + 0.6 * rng.standard_normal((6000, 256)).astype(np.float32)
    planted = rng.choice(6000, 100, replace=False)
    rows[planted[50:]] = rows[planted[:50]] + 1e-3 * rng.standard_normal((50, 256)).astype(np.float32)
    fake_collection(tmp_path / "f.npy", np.abs(rows))
    coll = load_collection(tmp_path / "f.npy")
    record = index.write(coll, "ivf")
    assert record["files"]["z"]["kind"] == "ivf"
    ix = index.load(coll)
    queries = rng.choice(6000, 200, replace=False)
    _, found = index.knn(ix, coll.z[queries], 10)
    from coala_embed.collection import neighbours

    recall = np.mean([len(set(found[k]) & {i for i, _ in neighbours(coll.z, coll.z[q], 10)}) / 10
                      for k, q in enumerate(queries)])  # fmt: skip
    assert recall >= 0.9
    assert group_pairs(len(coll), index.duplicate_pairs(ix, coll.z, 0.99)) == duplicates(coll.z, 0.99)
    assert len(duplicates(coll.z, 0.99)) >= 50


def test_without_faiss_every_command_keeps_the_exact_path(feats, weights_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if the extra were not installed
    r = _run("index", feats)
    assert r.exit_code == 2 and "pip install 'coala-embed[index]'" in r.output, r.output
    assert _run("neighbours", feats, "s0.wav").exit_code == 0
    assert _run("duplicates", feats).exit_code == 0
    assert _run("search", feats, "tag1", "--weights", weights_dir).exit_code == 0


@pytest.mark.parametrize("kind", ["flat", "ivf", "ivf-sq8"])
def test_dense_duplicate_pairs_come_in_bounded_blocks_with_the_exact_groups(tmp_path, monkeypatch, kind):
    """A collection where every pair qualifies (threshold 0) gives the exact groups, the pairs in blocks: through an
    inverted file no block exceeds SIMS_AT_ONCE, however many pairs there are."""
    pytest.importorskip("faiss")
    from coala_embed import index
    from coala_embed.collection import duplicates, group_pairs, load_collection

    rng = np.random.default_rng(1)
    fake_collection(tmp_path / "f.npy", np.abs(rng.standard_normal((1500, 64)).astype(np.float32)) + 1)
    coll = load_collection(tmp_path / "f.npy")
    index.write(coll, kind)
    ix = index.load(coll)
    monkeypatch.setattr(index, "SIMS_AT_ONCE", 1000)
    blocks = list(index.duplicate_pairs(ix, coll.z, 0.0))  # ~1.1M pairs: held here, not by duplicate_pairs
    largest = max(len(i) for i, _ in blocks)
    pairs = {pair for i, j in blocks for pair in zip(i.tolist(), j.tolist())}
    assert all(i < j for i, j in pairs)
    if kind == "flat":
        assert len(pairs) == 1500 * 1499 // 2
    else:  # each row meets the rows of its DUPLICATE_NPROBE nearest lists
        assert largest <= 1000 and len(pairs) > 1500 * index.DUPLICATE_NPROBE
    assert group_pairs(len(coll), blocks) == duplicates(coll.z, 0.0)


def test_group_pairs_is_the_union_find_of_its_pairs():
    """Blocks of array pairs, repeats and chains give the connected groups a per-pair union-find gives."""
    from coala_embed.collection import group_pairs

    rng = np.random.default_rng(3)
    i, j = rng.integers(0, 5000, 3000), rng.integers(0, 5000, 3000)
    parent = list(range(5000))

    def find(a: int) -> int:
        while parent[a] != a:
            a = parent[a]
        return a

    for a, b in zip(i.tolist(), j.tolist()):
        parent[find(a)] = find(b)
    expected: dict[int, list[int]] = {}
    for row in range(5000):
        expected.setdefault(find(row), []).append(row)
    want = sorted((g for g in expected.values() if len(g) > 1), key=lambda g: (-len(g), g[0]))
    blocks = [(i[a : a + 700], j[a : a + 700]) for a in range(0, 3000, 700)] + [(j[:50], i[:50])]
    assert group_pairs(5000, blocks) == want
    assert group_pairs(3, []) == [] and group_pairs(3, [(np.array([2]), np.array([0]))]) == [[0, 2]]
