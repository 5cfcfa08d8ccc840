"""Render General MIDI notes from a soundfont with fluidsynth, tagged by program name, family and register.

Also used by ``training/eval/tasks.py`` for the instrument-family evaluation task (another soundfont)."""

from __future__ import annotations

import logging
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf

from coala_embed.files import write_audio

log = logging.getLogger(__name__)

GM_FAMILIES = (
    "piano", "chromatic percussion", "organ", "guitar", "bass", "strings", "ensemble", "brass",
    "reed", "pipe", "synth lead", "synth pad", "synth effects", "ethnic", "percussive", "sound effects",
)  # fmt: skip
GM_PROGRAMS = """acoustic grand piano|bright acoustic piano|electric grand piano|honky tonk piano|electric piano|
electric piano|harpsichord|clavinet|celesta|glockenspiel|music box|vibraphone|marimba|xylophone|tubular bells|
dulcimer|drawbar organ|percussive organ|rock organ|church organ|reed organ|accordion|harmonica|tango accordion|
acoustic guitar nylon|acoustic guitar steel|electric guitar jazz|electric guitar clean|electric guitar muted|
overdriven guitar|distortion guitar|guitar harmonics|acoustic bass|electric bass finger|electric bass pick|
fretless bass|slap bass|slap bass|synth bass|synth bass|violin|viola|cello|contrabass|tremolo strings|
pizzicato strings|orchestral harp|timpani|string ensemble|string ensemble|synth strings|synth strings|choir aahs|
voice oohs|synth voice|orchestra hit|trumpet|trombone|tuba|muted trumpet|french horn|brass section|synth brass|
synth brass|soprano sax|alto sax|tenor sax|baritone sax|oboe|english horn|bassoon|clarinet|piccolo|flute|
recorder|pan flute|blown bottle|shakuhachi|whistle|ocarina|square lead|sawtooth lead|calliope lead|chiff lead|
charang lead|voice lead|fifths lead|bass lead|new age pad|warm pad|polysynth pad|choir pad|bowed pad|metallic pad|
halo pad|sweep pad|rain effect|soundtrack effect|crystal effect|atmosphere effect|brightness effect|goblins effect|
echoes effect|scifi effect|sitar|banjo|shamisen|koto|kalimba|bagpipe|fiddle|shanai|tinkle bell|agogo|steel drums|
woodblock|taiko drum|melodic tom|synth drum|reverse cymbal|guitar fret noise|breath noise|seashore|bird tweet|
telephone ring|helicopter|applause|gunshot""".replace("\n", "").split("|")
assert len(GM_PROGRAMS) == 128
GM_DRUMS = {
    35: "bass drum", 36: "bass drum", 37: "side stick", 38: "snare drum", 39: "hand clap", 40: "snare drum",
    41: "floor tom", 42: "closed hihat", 43: "floor tom", 44: "pedal hihat", 45: "tom", 46: "open hihat",
    47: "tom", 48: "tom", 49: "crash cymbal", 50: "tom", 51: "ride cymbal", 52: "china cymbal", 53: "ride bell",
    54: "tambourine", 55: "splash cymbal", 56: "cowbell", 57: "crash cymbal", 58: "vibraslap", 59: "ride cymbal",
    60: "bongo", 61: "bongo", 62: "conga", 63: "conga", 64: "conga", 65: "timbale", 66: "timbale", 67: "agogo",
    68: "agogo", 69: "cabasa", 70: "maracas", 71: "whistle", 72: "whistle", 73: "guiro", 74: "guiro",
    75: "claves", 76: "woodblock", 77: "woodblock", 78: "cuica", 79: "cuica", 80: "triangle", 81: "triangle",
}  # fmt: skip
PITCHES = (36, 45, 52, 60, 67, 76, 84)
NOTE_SECONDS, SLOT_SECONDS, RATE = 2.0, 3.0, 44100


def register(pitch: int) -> str:
    return "low" if pitch < 48 else ("middle" if pitch < 72 else "high")


def _midi(events: list[tuple[int, bytes]]) -> bytes:
    """A format-0 MIDI file; times in ms (division 1000 ticks per quarter at 1 s per quarter)."""
    track = b"\x00\xff\x51\x03" + (1_000_000).to_bytes(3, "big")
    last = 0
    for t, msg in sorted(events, key=lambda e: e[0]):
        delta, last = t - last, t
        vlq = [delta & 0x7F]
        while delta > 0x7F:
            delta >>= 7
            vlq.insert(0, (delta & 0x7F) | 0x80)
        track += bytes(vlq) + msg
    track += b"\x00\xff\x2f\x00"
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, 1000) + b"MTrk" + struct.pack(">I", len(track)) + track


def note_list(programs=range(128), pitches=PITCHES, drums=True, velocities=(100,)) -> list[dict]:
    notes = []
    for prog in programs:
        for pitch in pitches:
            for vel in velocities:
                notes.append({"channel": 0, "program": prog, "pitch": pitch, "velocity": vel})
    if drums:
        for pitch in GM_DRUMS:
            for vel in (70, 120):
                notes.append({"channel": 9, "program": -1, "pitch": pitch, "velocity": vel})
    return notes


def tags_of(note: dict) -> list[str]:
    if note["channel"] == 9:
        return GM_DRUMS[note["pitch"]].split() + ["drum", "percussion", "hit"]
    prog = note["program"]
    return GM_PROGRAMS[prog].split() + GM_FAMILIES[prog // 8].split() + [register(note["pitch"]), "note", "instrument"]


def render_notes(soundfont: Path, notes: list[dict], out: Path, prefix: str) -> list[Path]:
    """Render ``notes`` one after another in one fluidsynth run and cut the result into one WAV per note."""
    if shutil.which("fluidsynth") is None:
        raise RuntimeError("fluidsynth is not installed: apt-get install fluidsynth")
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{prefix}_{i:04d}.wav" for i in range(len(notes))]
    if all(p.exists() for p in paths):
        return paths
    events = []
    slot_ms, note_ms = int(SLOT_SECONDS * 1000), int(NOTE_SECONDS * 1000)
    for i, n in enumerate(notes):
        t, ch = i * slot_ms, n["channel"]
        if n["program"] >= 0:
            events.append((t, bytes([0xC0 | ch, n["program"]])))
        events.append((t + 1, bytes([0x90 | ch, n["pitch"], n["velocity"]])))
        events.append((t + 1 + note_ms, bytes([0x80 | ch, n["pitch"], 0])))
    events.append((len(notes) * slot_ms, bytes([0xB0, 123, 0])))
    mid, wav = out / "notes.mid", out / "notes.render.wav"
    mid.write_bytes(_midi(events))
    subprocess.run(
        ["fluidsynth", "-ni", "-q", "-g", "0.6", "-R", "0", "-C", "0", "-r", str(RATE), "-T", "wav", "-F", str(wav),
         str(soundfont), str(mid)],
        check=True, capture_output=True,
    )  # fmt: skip
    audio, sr = sf.read(wav, dtype="float32", always_2d=True)
    mono = audio.mean(axis=1)
    slot = int(SLOT_SECONDS * sr)
    for i, p in enumerate(paths):
        seg = mono[i * slot : (i + 1) * slot]
        write_audio(p, seg if seg.size else np.zeros(slot, np.float32), sr, subtype="PCM_16")
    wav.unlink()
    return paths


def render(soundfont: Path, out: Path, source: str) -> list[dict]:
    """Corpus rows (``path``, ``source``, ``raw_tags``) for the rendered notes of one soundfont."""
    notes = note_list()
    paths = render_notes(soundfont, notes, out, source)
    return [{"path": str(p), "source": source, "raw_tags": tags_of(n)} for p, n in zip(paths, notes)]
