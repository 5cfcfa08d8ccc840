"""Audio packed inside archives: zip-like (.zip, .pk3, .wz), OpenTTD's .cat, Doom's .wad (DMX lumps), Qt's .rcc."""

from __future__ import annotations

import logging
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np

from coala_embed.files import write_audio, write_bytes

log = logging.getLogger(__name__)
UNPACKED = "_unpacked"


def _safe(name: str) -> str:
    return re.sub(r"[^\w.\- /]+", "_", name).strip(" ./") or "sound"


def _member_path(out: Path, name: str) -> Path | None:
    """Where an archive member named ``name`` is written below ``out`` (its folder created), or None when the
    name would lead out of ``out`` (path traversal)."""
    target = out / _safe(name)
    if not target.resolve().is_relative_to(out.resolve()):
        return None
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def unpack_zip(archive: Path, out: Path, audio_ext: tuple[str, ...]) -> int:
    n = 0
    with zipfile.ZipFile(archive) as z:
        for info in z.infolist():
            if info.is_dir() or not info.filename.lower().endswith(audio_ext) or info.file_size > 200 << 20:
                continue
            target = _member_path(out, info.filename)
            if target is None:
                continue
            write_bytes(target, z.read(info))
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
        write_bytes(out / f"{k:03d} {name}.wav", body)
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
        write_audio(out / f"{name[2:]}.wav", (pcm.astype(np.float32) - 128.0) / 128.0, rate)
        n += 1
    return n


def unpack_rcc(archive: Path, out: Path, audio_ext: tuple[str, ...]) -> int:
    """The audio files of a Qt resource bundle (``.rcc``, formats 1-3): a header ``qres``, version, and the offsets
    of a tree of nodes, of the data and of the names. A node is a folder (child count, first child) or a file
    (locale, data offset), 14 bytes, plus a modification time from format 2 on; names are UTF-16 with a length and
    a hash; a file's data is a 4-byte length, then the bytes, stored as they are or zlib-compressed (``qCompress``:
    a 4-byte length first). zstd-compressed files are skipped."""
    b = archive.read_bytes()
    if b[:4] != b"qres":
        raise struct.error("not a Qt resource bundle")
    version, tree, data, names = struct.unpack(">IIII", b[4:20])
    node_size = 14 if version == 1 else 22

    def name(offset: int) -> str:
        (n,) = struct.unpack(">H", b[names + offset : names + offset + 2])
        return b[names + offset + 6 : names + offset + 6 + 2 * n].decode("utf-16-be")

    count = 0
    todo = [(0, "")]  # (node, its folder's path)
    while todo:
        node, folder = todo.pop()
        at = tree + node * node_size
        name_offset, flags = struct.unpack(">IH", b[at : at + 6])
        path = folder + "/" + name(name_offset) if node else ""
        if flags & 2:  # a folder
            n_children, first = struct.unpack(">II", b[at + 6 : at + 14])
            todo += [(c, path) for c in range(first, first + n_children)]
            continue
        if not path.lower().endswith(audio_ext) or flags & 4:
            continue
        (offset,) = struct.unpack(">I", b[at + 10 : at + 14])
        (size,) = struct.unpack(">I", b[data + offset : data + offset + 4])
        blob = b[data + offset + 4 : data + offset + 4 + size]
        if flags & 1:
            blob = zlib.decompress(blob[4:])
        target = _member_path(out, path)
        if target is None:
            continue
        write_bytes(target, blob)
        count += 1
    return count


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
            elif suffix == ".rcc":
                total += unpack_rcc(f, out, audio_ext)
        except (zipfile.BadZipFile, struct.error, OSError, IndexError, zlib.error, UnicodeDecodeError) as e:
            log.warning("cannot unpack %s: %s", f, e)
    return total
