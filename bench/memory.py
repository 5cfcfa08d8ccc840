"""Peak memory against duration, measured in one run on this machine (not a test).

Prints the peak RSS of the ``coala-embed`` command on 20-minute, 1-hour and 3-hour FLAC files (44.1 kHz
stereo, a chirp with a little noise so that FLAC keeps them small), and of ``get_embedding`` on 20-minute and
60-minute float32 arrays (each in a fresh process; the array's own size is printed beside it). Memory is flat
when the 3-hour peak stays within 10 % of the 20-minute one. ``--hop 2`` runs the command with ``--hop 2`` (a
patch every 46 ms, 48 times the patches; without ``--frames`` only the clip vector's running sums are kept), and
``--no-arrays`` skips the ``get_embedding`` lines.

    python bench/memory.py [--weights DIR] [--hours 0.333 1 3]
    python bench/memory.py --hop 2 --hours 0.0167 1 --no-arrays
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import cli  # noqa: E402

from coala_embed import CoalaConfig, CoalaModel, save_pretrained  # noqa: E402
from coala_embed.device import cpu_name  # noqa: E402

_ARRAY = """
import resource, sys
import numpy as np
from coala_embed import get_embedding, load_model
model = load_model(sys.argv[1], device="cpu")
n = int(float(sys.argv[2]) * 60 * 44_100)
x = np.empty(n, np.float32)
for i in range(0, n, 44_100 * 60):  # a chirp with a little noise, written in place (no float64 copy)
    t = np.arange(i, min(n, i + 44_100 * 60)) / 44_100
    x[i : i + len(t)] = 0.3 * np.sin(2 * np.pi * (200 + 50 * (t % 60)) * t) + 0.01 * np.random.default_rng(i).standard_normal(len(t))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
get_embedding(x, 44_100, model=model)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
print(x.nbytes >> 20, before, after)
"""


def write_flac(path: Path, hours: float) -> None:
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, "w", 44_100, 2, format="FLAC") as f:
        for minute in range(int(round(hours * 60))):
            t = np.arange(44_100 * 60) / 44_100 + 60 * minute
            x = 0.3 * np.sin(2 * np.pi * (200 + 50 * (t % 60)) * t) + 0.01 * rng.standard_normal(len(t))
            f.write(np.stack([x, x], axis=1).astype(np.float32))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=None, help="checkpoint folder (default: a random one)")
    p.add_argument("--hours", type=float, nargs="+", default=[1 / 3, 1.0, 3.0])
    p.add_argument("--hop", type=int, default=None, help="the command's --hop (default: the checkpoint's)")
    p.add_argument("--no-arrays", action="store_true", help="only the command line")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="coala-mem-"))
    weights = a.weights
    if weights is None:
        weights = str(tmp / "weights")
        save_pretrained(CoalaModel(CoalaConfig()), weights, trained=False)
    where = f"[{cpu_name()}]"
    cli_peaks = {}
    for hours in a.hours:
        f = tmp / f"{hours:g}h.flac"
        write_flac(f, hours)
        hop = ["--hop", str(a.hop)] if a.hop else []
        wall, rss = cli([str(f), "-o", str(tmp / "o.npy"), "--weights", weights, "-q", "-f", *hop])
        cli_peaks[hours] = rss
        print(f"coala-embed {' '.join(hop)} on a {hours * 60:.0f}-min 44.1 kHz stereo FLAC: peak RSS {rss} MB "
              f"({hours * 3600 / wall:.0f}x real time)  {where}")  # fmt: skip
        f.unlink()
    first, last = cli_peaks[a.hours[0]], cli_peaks[a.hours[-1]]
    print(f"coala-embed: {a.hours[-1] * 60:.0f} min peaks at {100 * (last / first - 1):+.1f} % of "
          f"{a.hours[0] * 60:.0f} min  {where}")  # fmt: skip
    for minutes in () if a.no_arrays else (20, 60):
        r = subprocess.run(
            [sys.executable, "-c", _ARRAY, weights, str(minutes)], check=True, capture_output=True, text=True
        )
        size, before, after = map(int, r.stdout.split())
        print(f"get_embedding on a {minutes}-min 44.1 kHz float32 array ({size} MB): peak RSS {before} MB before "
              f"the call, {after} MB after (+{after - before} MB)  {where}")  # fmt: skip


if __name__ == "__main__":
    main()
