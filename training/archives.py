"""Audio packed inside game archives: zip-like (.zip, .pk3, .wz), OpenTTD's .cat, Doom's .wad (DMX lumps)."""

from __future__ import annotations

import logging
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import soundfile as sf

log = logging.getLogger(__name__)
UNPACKED = "_unpacked"


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\- /]+", "_", name).strip(" ./") or "sound"


def unpack_zip(archive: Path, out: Path, audio_ext: tuple[str, ...]) -> int:
    n = 0
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.lower().endswith(audio_ext) or info.file_size > 200 << 20:
                continue
            target = out / _safe(info.filename)
            if not target.resolve().is_relative_to(out.resolve()):
                continue  # no path traversal out of the target folder
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(info))
            n += 1
    return n


def unpack_cat(archive: Path, out: Path) -> int:
    """OpenTTD sound catalogue: a table of (offset, size); at each offset a length-prefixed title, then a WAV."""
    d = archive.read_bytes()
    count = (struct.unpack("<I", d[:4])[0] & 0x7FFFFFFF) // 8
    n = 0
    for k in range(count):
        off, size = struct.unpack("<II", d[8 * k : 8 * k + 8])
        off &= 0x7FFFFFFF
        length = d[off]
        title = d[off + 1 : off + 1 + length].rstrip(b"\0").decode("utf-8", "replace")
        m = re.match(r'\s*"([^"]+)"', title)
        name = _safe(m.group(1) if m else title[:40]).replace("/", "_")
        body = d[off + 1 + length : off + 1 + length + size]
        if body[:4] != b"RIFF":
            continue
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{k:03d} {name}.wav").write_bytes(body)
        n += 1
    return n


def unpack_wad(archive: Path, out: Path) -> int:
    """Doom WAD: the ``DS*`` lumps are DMX sounds (format 3, rate, count, 16 pad bytes, unsigned 8-bit PCM)."""
    d = archive.read_bytes()
    numlumps, dirofs = struct.unpack("<4xII", d[:12])
    n = 0
    for k in range(numlumps):
        pos, size, raw = struct.unpack("<II8s", d[dirofs + 16 * k : dirofs + 16 * k + 16])
        name = raw.rstrip(b"\0").decode("ascii", "replace").lower()
        if not name.startswith("ds") or size < 40:
            continue
        fmt, rate, count = struct.unpack("<HHI", d[pos : pos + 8])
        if fmt != 3 or rate == 0:
            continue
        pcm = np.frombuffer(d[pos + 24 : pos + 8 + count - 16], dtype=np.uint8)
        if pcm.size < 100:
            continue
        out.mkdir(parents=True, exist_ok=True)
        sf.write(out / f"{name[2:]}.wav", (pcm.astype(np.float32) - 128.0) / 128.0, rate)
        n += 1
    return n


def unpack_all(root: Path, audio_ext: tuple[str, ...], archive_ext: tuple[str, ...]) -> int:
    """Unpack the audio of every archive under ``root`` into ``root/_unpacked/<archive name>/``."""
    total = 0
    for f in sorted(root.rglob("*")):
        if not f.is_file() or UNPACKED in f.parts:
            continue
        out = root / UNPACKED / f.stem
        suffix = f.suffix.lower()
        try:
            if suffix in archive_ext:
                total += unpack_zip(f, out, audio_ext)
            elif suffix == ".cat":
                total += unpack_cat(f, out)
            elif suffix == ".wad":
                total += unpack_wad(f, out)
        except (zipfile.BadZipFile, struct.error, OSError, IndexError) as e:
            log.warning("cannot unpack %s: %s", f, e)
    return total
