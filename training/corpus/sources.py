"""The Debian packages the pretraining corpus comes from, their licences, and what must never enter it."""

from __future__ import annotations

# Pretraining sources: package -> (licence as its debian/copyright states it, tags every sound of it gets).
# The extra tags say what every sound of the package is (speech for the phone prompts, music for the music
# packages), never where it came from: no "game", no genre of the game; everything else comes from paths, stamp
# texts and transcripts.
SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "tuxpaint-stamps-default": ("GPL-2+", ()),
    "supertux-data": ("GPL-3+ / CC-BY-SA", ()),
    "supertuxkart-data": ("GPL-3+ / CC-BY-SA / CC0", ()),
    "redeclipse-data": ("CC-BY-SA / mixed free", ()),
    "naev-data": ("GPL-3+ / CC-BY-SA / public domain", ()),
    "wesnoth-1.16-data": ("GPL-2+", ()),
    "wesnoth-1.16-music": ("GPL-2+", ("music", "soundtrack")),
    "colobot-common-sounds": ("GPL-3+", ()),
    "lincity-ng-data": ("GPL-2+", ()),
    "fillets-ng-data": ("GPL-2+", ()),
    "endless-sky-data": ("GPL-3+ / CC-BY-SA / public domain", ()),
    "extremetuxracer-data": ("GPL-2+", ()),
    "frozen-bubble-data": ("GPL-2", ()),
    "sound-theme-freedesktop": ("GPL-2+ / CC-BY-SA", ("notification",)),
    "oxygen-sounds": ("LGPL-2.1+ / CC-BY-SA", ("notification",)),
    "deepin-sound-theme": ("GPL-3+", ("notification",)),
    "yaru-theme-sound": ("CC-BY-SA-4.0", ("notification",)),
    "lomiri-sounds": ("CC-BY-SA / CC0 / GPL", ("notification", "phone")),
    "sonic-pi-samples": ("CC0 / CC-BY", ("music",)),
    "lmms-common": ("GPL-2+", ("music",)),
    "asterisk-core-sounds-en-wav": ("CC-BY-SA-3.0", ("speech", "voice", "female", "english", "telephone")),
    "asterisk-moh-opsound-wav": ("CC-BY-SA-3.0", ("music",)),
    "warzone2100-data": ("GPL-2+ / CC-BY-SA", ()),
    "openarena-data": ("GPL-2+", ()),
    "freedoom": ("BSD-3-clause", ()),
    "openttd-opensfx": ("CC-Sampling-Plus-1.0", ()),
    # More games: more varied effects, ambiences and voices.
    "freedroidrpg-data": ("GPL-2+ / GPL-3 / Expat / BSD-3-clause", ()),
    "cube2-data": ("CC-BY-3.0 / CC-BY-SA / public domain", ()),
    "flare-game": ("CC-BY-SA-3.0+ / GPL-3+", ()),
    "lugaru-data": ("CC-BY-SA / GPL-2+", ()),
    "pingus-data": ("GPL-2+", ()),
    "xmoto-data": ("GPL-2+ / MIT / BSD-3-clause", ("music",)),
    "boswars-data": ("GPL-2+", ()),
    "scorched3d-data": ("GPL-2+ / CC-BY-SA-3.0 / public domain", ()),
    "enigma-data": ("GPL-2+", ()),
    "btanks-data": ("GPL-2+ / LGPL-2.1+ / public domain", ()),
    "pokerth-data": ("GPL-2+ / BSD-3-clause / public domain", ()),
    "ri-li-data": ("GPL-2 / GPL-3", ()),
    "tuxfootball": ("GPL-2+", ()),
    "bzflag-data": ("GPL-2+ / LGPL-2.1", ()),
    "freeciv-data": ("GPL-2+", ()),
    "trigger-rally-data": ("GPL-2+ / CC0 / CC-BY-SA-3.0 / CC-BY-3.0", ()),
    "warmux-data": ("GPL-2+", ()),
    "7kaa-data": ("GPL-2+", ()),
    "nexuiz-data": ("GPL-2+", ()),
}
# Varied speech, opt-in (`python -m training.corpus --speech`): gcin-voice speaks Mandarin syllables in two voices.
# The default corpus does not include it: a corpus with it did not beat the shipped run (training/README.md).
SPEECH_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "gcin-voice": ("GPL-3 / LGPL-3 / CC-BY-3.0", ("speech", "voice", "spoken", "chinese", "mandarin", "syllable")),
}
# The wider corpus, opt-in (`python -m training.corpus --wide`): phone prompts in four more languages (tagged with
# the English transcript of the same prompt), acted dialogue in Czech and Dutch, more game effects and soundtracks.
WIDE_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "asterisk-core-sounds-es-wav": ("CC-BY-SA-3.0", ("speech", "voice", "female", "spanish", "telephone")),
    "asterisk-core-sounds-fr-wav": ("CC-BY-SA-3.0", ("speech", "voice", "female", "french", "telephone")),
    "asterisk-core-sounds-it-wav": ("CC-BY-SA-3.0", ("speech", "voice", "male", "italian", "telephone")),
    "asterisk-core-sounds-ru-wav": ("CC-BY-SA-3.0", ("speech", "voice", "female", "russian", "telephone")),
    "fillets-ng-data-cs": ("GPL-2+", ("speech", "voice", "czech", "dialogue")),
    "fillets-ng-data-nl": ("GPL-2+", ("speech", "voice", "dutch", "dialogue")),
    "ufoai-sound": ("GPL-2+ / CC-BY-SA-3.0 / CC-BY-3.0", ()),
    "minetest-data": ("CC-BY-SA-3.0 / LGPL-2.1+ / MIT", ()),
    "wordwarvi-sound": ("GPL-2+ / CC-BY-SA-3.0", ()),
    "warzone2100-music": ("GPL-2+ / CC0-1.0", ("music", "soundtrack")),
    "nexuiz-music": ("GPL-2+", ("music", "soundtrack")),
    "ufoai-music": ("GPL-2+ / CC-BY-SA-3.0 / CC-BY-3.0", ("music", "soundtrack")),
    # the recorded sentences of a Russian unit-selection voice (its wav/ folder; one male speaker, read prose)
    "festvox-ru": ("BSD-like", ("speech", "voice", "male", "russian", "sentence")),
    # GCompris's sounds inside its Qt resource bundles (.rcc): instruments, farm animals, effects, world music
    "gcompris-qt-data": ("GPL-3+; some files CC-BY-3.0 or CC-BY-SA-4.0 (its debian/copyright)", ()),
}
ALL_SOURCES = {**SOURCES, **SPEECH_SOURCES, **WIDE_SOURCES}
# Their file names say *what* is spoken (or name a level), so only the package's metadata tags them (corpus.scan).
PACKAGE_TAGS_ONLY = (*SPEECH_SOURCES, "fillets-ng-data-cs", "fillets-ng-data-nl", "festvox-ru")
# At most this many sounds of a package, drawn with a fixed seed, so that a few voices do not dominate the corpus
# (gcin-voice has 2,358 syllables from two speakers; fillets-ng-data-cs 1,882 lines from a handful of actors).
MAX_FILES = {
    "gcin-voice": 1000,
    "asterisk-core-sounds-es-wav": 300,
    "asterisk-core-sounds-fr-wav": 300,
    "asterisk-core-sounds-it-wav": 300,
    "asterisk-core-sounds-ru-wav": 300,
    "fillets-ng-data-cs": 400,
    "fillets-ng-data-nl": 400,
    "festvox-ru": 300,
}
# Packages whose files are read without being sounds themselves.
METADATA_PACKAGES = ("asterisk-core-sounds-en",)
# General MIDI soundfonts rendered note by note with fluidsynth.
SOUNDFONTS: dict[str, tuple[str, str]] = {
    "fluid-soundfont-gm": ("MIT", "usr/share/sounds/sf2/FluidR3_GM.sf2"),
    "timgm6mb-soundfont": ("GPL-2", "usr/share/sounds/sf2/TimGM6mb.sf2"),
}

# Opt-in (`python -m training.corpus --fm-notes`): the same GM notes from an OPL3 FM-synthesis soundfont, timbres
# unlike the sampled ones, to give each GM family more varied voicings (not in the default corpus; results log in
# training/README.md).
FM_SOUNDFONTS: dict[str, tuple[str, str]] = {
    "opl3-soundfont": ("CC-BY-SA-4.0", "usr/share/sounds/sf2/OPL-3_FM_128M.sf2"),
}
ALL_SOUNDFONTS = {**SOUNDFONTS, **FM_SOUNDFONTS}

# The evaluation tasks: never part of pretraining (training/eval/tasks.py builds them).
EVALUATION_PACKAGES = ("0ad-data", "musescore-general-soundfont", "klettres-data", "avldrums.lv2-soundfont")
# Not to be used anywhere in the project.
FORBIDDEN_PACKAGES = (
    "hedgewars-data",
    "megaglest-data",
    "widelands-data",
    "ktuberling-data",
    "hydrogen-drumkits",
    "csound-soundfont",
    "freepats",
    # the evaluation soundfont's samples in other packagings
    "musescore-general-soundfont-small",
    "musescore-general-soundfont-lossless",
)
# Every package whose name starts with one of these is forbidden too (Hydrogen's drum kits in any packaging).
FORBIDDEN_PREFIXES = ("hydrogen",)
EXCLUDED_PACKAGES = EVALUATION_PACKAGES + FORBIDDEN_PACKAGES


def forbidden(pkg: str) -> bool:
    """True for a package that must not be used anywhere in the project."""
    return pkg in FORBIDDEN_PACKAGES or pkg.startswith(FORBIDDEN_PREFIXES)


# Folders inside pretraining packages that hold copies of evaluation sounds: cube2-data ships seven
# 0 A.D. sounds in packages/sounds/0ad/ (found by comparing file names and MD5s with the events task).
EXCLUDED_DIRS = ("0ad",)

# A dictionary of English words: a tag enters the vocabulary only if it is a word (tags.drop_reason).
DICTIONARY: tuple[str, str] = ("wamerican", "usr/share/dict/american-english")

PRETRAIN_PACKAGES = tuple(ALL_SOURCES) + METADATA_PACKAGES + tuple(ALL_SOUNDFONTS)
assert not set(PRETRAIN_PACKAGES) & set(EXCLUDED_PACKAGES)
assert not any(forbidden(p) for p in PRETRAIN_PACKAGES)

AUDIO_EXTENSIONS = (".wav", ".ogg", ".flac", ".mp3", ".opus", ".oga")
# (grandorgue-demo's .orgue is a zip too, but of 92 WavPack pipe samples named .wav, which libsndfile cannot read)
ARCHIVE_EXTENSIONS = (".zip", ".pk3", ".wz")
