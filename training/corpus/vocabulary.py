"""Raw tags from paths and texts, and the paper's tag processing and vocabulary (docs/method.md section 2.2-2.3)."""

from __future__ import annotations

import functools
import os
import re
from collections import Counter
from collections.abc import Iterable, Sequence

# Words that say where a file sits in a package, not what it sounds like.
PACKAGING_WORDS = frozenset(
    """usr share games game data sound sounds sfx snd ogg wav flac mp mp3 opus oga audio doc lib local file files
    asset assets res resource resources media base baseoa default dat desc pk wz zip wad cat en us
    stamp stamps tuxpaint supertux supertuxkart redeclipse naev wesnoth colobot lincity ng fillets endless sky
    extremetuxracer etr frozen bubble freedesktop oxygen deepin yaru lomiri sonic pi lmms asterisk moh opsound
    warzone openarena freedoom openttd opensfx stereo mono khz bit unpacked pak core mp vm conf confbridge tut
    pcv memressp festivoxmale gcompris activities""".split()
)
# ISO 639-1 codes and a few region codes seen in paths (kangaroo_desc_fr.ogg, en_US_f_Allison).
LANGUAGE_CODES = frozenset(
    """af am an ar as ast az be bg bn bo br bs ca cs cy da de dz el eo es et eu fa fi fr ga gd gl gu he hi hr hu hy
    id is it ja ka kk km kn ko ks ku lb lg lt lv mk ml mn mr ms mt nb ne nl nn nr oc or pa pl pt ro ru rw sa sk sl
    sq sr sv sw ta te th tl tr uk ur uz ve vi wa xh zh zu gb uk br""".split()
)
# Speaker names in voice packs: who speaks, not what.
SPEAKER_NAMES = frozenset({"allison", "june", "carlo", "ivrvoice"})
# Dictionary words that say where a sound came from (a game, a mod, an operating system, a level), not what it
# sounds like: kept out of the vocabulary so that the contrastive loss does not teach the encoder provenance.
PROVENANCE_WORDS = frozenset(
    """game mod linux package shooter fantasy tutorial misc demo level player npc unit item inventory soundset
    extra primary secondary option status list user currently world new min vol col com bot nexus tux halo
    insurrectionist freelance reptilian onslaught""".split()
)
# Words about sounds that a general dictionary lacks (instrument, drum and vocal names, languages of speech).
SOUND_WORDS = frozenset(
    """hihat tabla aah ooh electro synth bassloop ambience ambi english german french spanish italian russian
    dutch czech""".split()
)
# Shorter tokens are path fragments ("ab", "sp", "st"), not words about a sound.
MIN_TAG_LETTERS = 3

_SPLIT = re.compile(r"[\\/_\-.\s,;:()\[\]{}'\"!?&+=#@%*]+")
_CAMEL = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")


def tokenize(text: str) -> list[str]:
    """Split a path or phrase on separators, underscores, hyphens, dots, CamelCase and digits.

    ``"sounds/BigExplosion_02.ogg"`` -> ``["sounds", "Big", "Explosion", "02", "ogg"]``.
    """
    out: list[str] = []
    for part in _SPLIT.split(text):
        out += _CAMEL.findall(part)
    return out


def path_tokens(relpath: str, drop: Iterable[str] = ()) -> list[str]:
    """Raw tags of a file from its path below the package root, minus extensions, language codes, numbers,
    packaging words and the words in ``drop`` (e.g. the package's own name)."""
    stem, dot, ext = relpath.rpartition(".")
    text = stem if dot and len(ext) <= 5 else relpath
    dropped = PACKAGING_WORDS | LANGUAGE_CODES | SPEAKER_NAMES | {d.lower() for d in drop}
    return [t for t in tokenize(text) if not t.isdigit() and t.lower() not in dropped]


@functools.lru_cache(maxsize=1)
def stopwords() -> frozenset[str]:
    """English stopwords from scikit-learn (NLTK's corpus is a download that cannot happen here)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


@functools.lru_cache(maxsize=1)
def _inflect():
    import inflect

    return inflect.engine()


@functools.lru_cache(maxsize=65536)
def singular(token: str) -> str:
    """``inflect``'s singular noun, or the token itself when inflect says it is not a plural."""
    s = _inflect().singular_noun(token)
    return s if s else token


def normalize(raw: Iterable[str]) -> list[str]:
    """The paper's per-sound processing: keep tokens for which ``str.isalpha()`` holds (checked before
    lowercasing), lowercase, drop stopwords and tokens of one letter, singularise, de-duplicate.

    The result is sorted, unlike the original's set order, so that reruns give the same files.
    """
    stop = stopwords()
    out = set()
    for tok in raw:
        if not tok.isalpha():
            continue
        t = tok.lower()
        if len(t) <= 1 or t in stop:
            continue
        out.add(singular(t))
    return sorted(out)


def drop_reason(tag: str, words: frozenset[str] | None, keep: frozenset[str] = frozenset()) -> str | None:
    """Why ``tag`` does not describe a sound, or None when it may enter the vocabulary.

    ``words`` is a dictionary of lowercase English words (None: no dictionary check); ``keep`` holds tags known to
    describe sounds (e.g. the General MIDI program names of rendered notes), which are always kept.
    """
    if tag in keep or tag in SOUND_WORDS:
        return None
    if len(tag) < MIN_TAG_LETTERS:
        return "fragment"
    if tag in PROVENANCE_WORDS:
        return "provenance"
    if words is not None and tag not in words:
        return "not a word"
    return None


def read_words(path: str | os.PathLike) -> frozenset[str]:
    """The lowercase entries of a one-word-per-line dictionary (Debian's ``/usr/share/dict`` format); proper
    nouns (capitalised: game, character and place names) and possessives are left out."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return frozenset(w for w in (line.strip() for line in f) if w.isalpha() and w.islower())


def build_vocabulary(
    tag_lists: Sequence[Sequence[str]], min_count: int = 10, max_fraction: float = 0.7, keep_n: int = 1000
) -> list[str]:
    """gensim's ``filter_extremes(no_below, no_above, keep_n)`` over per-sound tag lists.

    Keeps tags in at least ``min_count`` sounds and at most ``max_fraction`` of them, then the ``keep_n``
    most frequent. Order: document frequency descending, ties alphabetical, so the order is deterministic.
    """
    df = Counter(t for tags in tag_lists for t in set(tags))
    limit = max_fraction * len(tag_lists)
    kept = [t for t, n in df.items() if n >= min_count and n <= limit]
    kept.sort(key=lambda t: (-df[t], t))
    return kept[:keep_n]


def multi_hot(tag_lists: Sequence[Sequence[str]], vocabulary: Sequence[str]):
    """``[N, len(vocabulary)]`` int8 multi-hot matrix."""
    import numpy as np

    index = {t: i for i, t in enumerate(vocabulary)}
    out = np.zeros((len(tag_lists), len(vocabulary)), dtype=np.int8)
    for row, tags in enumerate(tag_lists):
        for t in tags:
            j = index.get(t)
            if j is not None:
                out[row, j] = 1
    return out
