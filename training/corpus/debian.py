"""Debian packages as a data source: download once, unpack (with the audio inside their archives)."""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from . import archives
from .sources import ARCHIVE_EXTENSIONS, AUDIO_EXTENSIONS, EXCLUDED_PACKAGES, forbidden

log = logging.getLogger(__name__)


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


def download(packages: list[str], debs: Path, allow_excluded: bool = False) -> dict[str, str]:
    """``apt-get download`` each package once; return package -> version. The evaluation packages are
    refused unless ``allow_excluded`` (only ``training/eval/tasks.py`` sets it); forbidden ones always are."""
    debs.mkdir(parents=True, exist_ok=True)
    versions = {}
    for pkg in packages:
        if forbidden(pkg) or (pkg in EXCLUDED_PACKAGES and not allow_excluded):
            raise ValueError(f"{pkg} must never be part of the pretraining corpus")
        found = sorted(debs.glob(f"{pkg}_*.deb"))
        if not found:
            log.info("downloading %s", pkg)
            try:
                run(["apt-get", "download", pkg], cwd=debs)
            except subprocess.CalledProcessError as e:
                log.warning("cannot download %s (%s); run `apt-get update` first", pkg, e.stderr.strip()[-200:])
                continue
            found = sorted(debs.glob(f"{pkg}_*.deb"))
        versions[pkg] = run(["dpkg-deb", "-f", str(found[-1]), "Version"]).stdout.strip()
    return versions


def extract(pkg: str, debs: Path, root: Path, unpack: bool = True) -> Path | None:
    """``dpkg-deb -x`` into ``root/pkg`` (marked done by ``.done`` so that an interrupted unpack reruns);
    with ``unpack``, also the audio inside the package's archives."""
    out = root / pkg
    if (out / ".done").exists():
        if unpack and not (out / ".unpacked").exists():
            archives.unpack_all(out, AUDIO_EXTENSIONS, ARCHIVE_EXTENSIONS)
            (out / ".unpacked").touch()
        return out
    found = sorted(debs.glob(f"{pkg}_*.deb"))
    if not found:
        return None
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    run(["dpkg-deb", "-x", str(found[-1]), str(out)])
    (out / ".done").touch()
    if unpack:
        archives.unpack_all(out, AUDIO_EXTENSIONS, ARCHIVE_EXTENSIONS)
        (out / ".unpacked").touch()
    return out
