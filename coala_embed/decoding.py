"""Decode many files ahead of the model, in threads or in worker processes, and hand their parts on in input
order: log-mel patches, or resampled signal blocks when the model's device computes the log-mels.

Threads share one interpreter: decoding, resampling and the STFT release the GIL, but the Python between them
does not, so past a few cores threads stop scaling (on the 16-core H200 machine 14 threads kept the GPU fed at
1,700x against a decoding bound of 6,200x). Worker processes have no such limit, cost a start-up (a fork from
a preloaded server) and a copy of each part through a pipe, and isolate the run from a decoder that crashes:
the file it was decoding is reported as failed and a new worker takes over. ``bench/throughput.py`` measures both.
"""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing as mp
import multiprocessing.connection
import os
import queue
import signal as signals
import threading
import traceback
from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .config import FrontendConfig
from .errors import AudioError, CoalaEmbedError
from .frontend import PatchCutter, Patches, Signal
from .streaming import iter_file_patches, iter_file_signal

DECODERS = ("auto", "threads", "processes")
LOG_MEL_ON = ("auto", "cpu", "device")
# ``auto`` decodes in processes on machines with at least this many cores. Measured: on 2 cores threads keep 100 %
# of the machine's bound and processes 86 % (README, "An archive"); on 16 cores threads kept 27 % of the decode
# bound. Where between the two processes start to win is not measured yet (``bench/gpu.sh`` measures 16 cores).
PROCESS_MIN_CORES = 4
PIPE_BYTES = 1 << 20  # each worker's pipe: what it may hold ready ahead of the model (~28 patches)

_END = "end"  # a file's last item: the file is complete

Part = Patches | Signal
Item = Part | str | Exception  # a part, _END, or an error that ends the file


def cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 2


def resolve_decoders(decoders: str, n_cores: int | None = None) -> str:
    """``auto`` -> ``processes`` on machines with at least ``PROCESS_MIN_CORES`` cores, else ``threads``."""
    if decoders not in DECODERS:
        raise ValueError(f"decoders must be one of {DECODERS}, got {decoders!r}")
    if decoders != "auto":
        return decoders
    return "processes" if (n_cores or cores()) >= PROCESS_MIN_CORES else "threads"


def resolve_log_mel_on(log_mel_on: str, device: torch.device) -> str:
    """Where the log-mels run: ``auto`` -> ``device`` when the model is on a GPU (the decoders then only decode
    and resample, and the STFT runs beside the encoder), else ``cpu``."""
    if log_mel_on not in LOG_MEL_ON:
        raise ValueError(f"log_mel_on must be one of {LOG_MEL_ON}, got {log_mel_on!r}")
    if log_mel_on != "auto":
        return log_mel_on
    return "device" if device.type == "cuda" else "cpu"


def file_items(path: Path, cfg: FrontendConfig, max_seconds: float | None, signal: bool) -> Iterator[Item]:
    """One file's parts (patches, or signal blocks when ``signal``), then ``_END``; or an error that ends the
    file: an AudioError naming it for anything a bad file can provoke, any other exception for a bug."""
    try:
        if signal:
            yield from iter_file_signal(path, cfg, max_seconds=max_seconds)
        else:
            yield from iter_file_patches(path, cfg, max_seconds=max_seconds)
        yield _END
    except CoalaEmbedError as e:
        yield e
    except (MemoryError, OSError, ValueError, RuntimeError) as e:  # anything a bad file can provoke
        yield AudioError(f"{path}: {type(e).__name__}: {e}")
    except Exception as e:  # a bug, not a bad file: the consumer re-raises it
        yield e


def _produce(
    path: Path, cfg: FrontendConfig, max_seconds: float | None, signal: bool, parts: queue.Queue, stop: threading.Event
) -> None:
    """A decoding thread's job: one file's items into ``parts``; gives up as soon as ``stop`` is set."""
    for item in file_items(path, cfg, max_seconds, signal):
        while True:
            if stop.is_set():
                return
            try:
                parts.put(item, timeout=0.1)
                break
            except queue.Full:
                pass


def _threaded(
    todo: list[tuple[int, Path]], cfg: FrontendConfig, max_seconds: float | None, signal: bool, workers: int
) -> Iterator[tuple[int, Path, Iterator[Item]]]:
    """Files decoded by a thread pool a few files ahead of the consumer, handed on in input order."""
    stop = threading.Event()  # set when the consumer stops, so that no producer waits on a full queue forever

    def drain(parts: queue.Queue) -> Iterator[Item]:
        while True:
            item = parts.get()
            yield item
            if item is _END or isinstance(item, Exception):
                return

    waiting: deque = deque()
    it = iter(todo)
    lookahead = max(2, 4 * workers)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        try:
            while True:
                while len(waiting) < lookahead:
                    nxt = next(it, None)
                    if nxt is None:
                        break
                    parts: queue.Queue = queue.Queue(maxsize=4)
                    pool.submit(_produce, nxt[1], cfg, max_seconds, signal, parts, stop)
                    waiting.append((nxt[0], nxt[1], parts))
                if not waiting:
                    return
                i, path, parts = waiting.popleft()
                yield i, path, drain(parts)
        finally:
            stop.set()  # before the pool's exit waits for its threads


def _to_wire(item: Item) -> tuple:
    """An item as plain arrays and strings for the pipe (a tensor would travel as a shared-memory handle)."""
    if isinstance(item, Patches):
        return ("patches", item.patches.numpy(), item.starts, item.ends, item.duration)
    if isinstance(item, Signal):
        return ("signal", item.audio, item.whole, item.last)
    if isinstance(item, CoalaEmbedError):
        return ("error", item)
    if isinstance(item, Exception):
        return ("bug", "".join(traceback.format_exception(item)))
    return ("end",)


def _from_wire(msg: tuple) -> Item:
    kind = msg[0]
    if kind == "patches":
        return Patches(torch.from_numpy(msg[1]), msg[2], msg[3], msg[4])
    if kind == "signal":
        return Signal(msg[1], msg[2], msg[3])
    if kind == "error":
        return msg[1]
    if kind == "bug":
        return RuntimeError(f"a decoding process failed:\n{msg[1]}")
    return _END


def _worker(
    tasks: list[tuple[int, str]],
    cfg: FrontendConfig,
    max_seconds: float | None,
    signal: bool,
    out: mp.connection.Connection,
    current: ctypes.c_longlong,
) -> None:
    """A decoding process: its files' items sent down ``out``, each tagged with the file's position in the run,
    which ``current`` also holds while the file is decoded. Every send is complete when it returns, so a file's
    items have all left before the next file is opened. Exits when its files are done or the run has gone."""
    torch.set_num_threads(1)
    try:
        fcntl.fcntl(out.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except OSError:  # over the system's pipe-max-size: the default (64 KiB) only limits the read-ahead
        pass
    try:
        for pos, path in tasks:
            current.value = pos
            for item in file_items(Path(path), cfg, max_seconds, signal):
                out.send((pos, *_to_wire(item)))
    except OSError:  # BrokenPipeError: the run closed its end or was killed, nobody reads this
        pass
    os._exit(0)  # not the interpreter's exit: nothing of the fork server's state to clean up


class _Died(Exception):
    pass


def _death(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        name = signals.Signals(-exitcode).name
        return f"{name}{'; out of memory?' if name == 'SIGKILL' else ''}"
    return f"exit code {exitcode}"


class _Processes:
    """``n`` decoding processes; worker ``k`` takes the files at positions ``k, k + n, k + 2n, ...`` of ``todo``
    and sends their items down its own pipe, so the consumer reads every file from one known pipe, in input
    order. The worker holds the pipe's only write end: when it dies, even in the middle of a message, reading
    ends (EOF) rather than waiting forever. A worker that dies is replaced; if it died on the file being read,
    that file is reported as failed."""

    def __init__(self, todo: list[tuple[int, Path]], cfg: FrontendConfig, max_seconds: float | None, signal: bool,
                 n: int) -> None:  # fmt: skip
        self.todo, self.cfg, self.max_seconds, self.signal, self.n = todo, cfg, max_seconds, signal, n
        self.ctx = mp.get_context("forkserver")
        self.ctx.set_forkserver_preload(["coala_embed.decoding"])  # forks start with torch already imported
        self.procs: list = [None] * n
        self.conns: list = [None] * n
        self.current: list = [None] * n
        for k in range(min(n, len(todo))):
            self._start(k, k)

    def _start(self, k: int, first: int) -> None:
        """(Re)start worker ``k`` on the files at positions ``first, first + n, ...``."""
        if self.procs[k] is not None:
            self.procs[k].join(timeout=1)
            self.conns[k].close()  # a new pipe: the dead worker may have left half a message in the old one
        self.current[k] = self.ctx.Value("q", -1, lock=False)
        tasks = [(pos, str(self.todo[pos][1])) for pos in range(first, len(self.todo), self.n)]
        reader, writer = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(
            target=_worker, args=(tasks, self.cfg, self.max_seconds, self.signal, writer, self.current[k]),
            daemon=True, name=f"coala-embed decoder {k}",
        )  # fmt: skip
        proc.start()
        writer.close()  # the worker now holds the only write end
        self.procs[k], self.conns[k] = proc, reader

    def _get(self, k: int) -> tuple:
        try:
            return self.conns[k].recv()
        except (EOFError, OSError):  # the worker has exited: after its last whole message, or in the middle of one
            raise _Died from None

    def items(self, pos: int) -> Iterator[Item]:
        """The items of the file at ``pos``, ending with ``_END`` or an error."""
        k, got, skip, restarts = pos % self.n, 0, 0, 0
        while True:
            try:
                msg = self._get(k)
            except _Died:
                self.procs[k].join(timeout=5)  # its pipe may close a moment before it can be reaped
                code = self.procs[k].exitcode
                if self.current[k].value == pos or restarts >= 2:  # this file took its decoder down
                    self._start(k, pos + self.n)
                    yield AudioError(
                        f"{self.todo[pos][1]}: the decoding process died while reading it ({_death(code)})"
                    )
                    return
                # it died before it reached this file (starting up, or between two files): decode this one again,
                # skipping any parts already handed on (decoding is deterministic)
                self._start(k, pos)
                restarts += 1
                skip = got
                continue
            assert msg[0] == pos, f"decoder {k} sent file {msg[0]} while {pos} was expected"
            if skip:
                skip -= 1
                continue
            item = _from_wire(msg[1:])
            got += 1
            yield item
            if item is _END or isinstance(item, Exception):
                return

    def close(self) -> None:
        for proc in self.procs:
            if proc is not None and proc.is_alive():
                proc.terminate()
        for proc, conn in zip(self.procs, self.conns):
            if proc is not None:
                proc.join(timeout=5)
                conn.close()


def _in_processes(
    todo: list[tuple[int, Path]], cfg: FrontendConfig, max_seconds: float | None, signal: bool, workers: int
) -> Iterator[tuple[int, Path, Iterator[Item]]]:
    procs = _Processes(todo, cfg, max_seconds, signal, max(1, workers))
    try:
        for pos, (i, path) in enumerate(todo):
            yield i, path, procs.items(pos)
    finally:
        procs.close()


def decode(
    todo: list[tuple[int, Path]],
    cfg: FrontendConfig,
    *,
    workers: int,
    decoders: str = "threads",
    max_seconds: float | None = None,
    device: torch.device | None = None,
) -> Generator[tuple[tuple[int, Path, bool], Patches | CoalaEmbedError], None, None]:
    """Decode the files ``todo`` (``(index, path)`` pairs) into patches, ``workers`` threads or processes
    ahead of the consumer, in input order.

    Yields ``((index, path, last), patches)`` for each part of a file, ``last`` marking its final item (an empty
    Patches after its parts), or ``((index, path, True), error)`` for a file that failed (an AudioError naming
    it). With ``device`` the decoders only decode and resample, and the log-mels are computed here, on
    ``device``, in the consumer's thread; otherwise the decoders compute them on the CPU. Raises any error
    that is a bug rather than a bad file.
    """
    signal = device is not None
    source = _in_processes if resolve_decoders(decoders) == "processes" else _threaded
    for i, path, items in source(todo, cfg, max_seconds, signal, workers):
        cut = PatchCutter(cfg, device)
        last_part: Patches | None = None
        failed: CoalaEmbedError | None = None
        n = 0
        for item in items:  # read every item of the file, even after a failure, so that its decoder moves on
            if isinstance(item, Exception):
                if not isinstance(item, CoalaEmbedError):
                    raise item
                failed = failed or item
            elif item is _END:
                if failed is None and n == 0:
                    failed = AudioError(f"{path}: gave no patches")
            elif failed is None:
                try:
                    part = cut(item) if isinstance(item, Signal) else item
                except CoalaEmbedError as e:
                    failed = e
                    continue
                assert isinstance(part, Patches)
                n += len(part.patches)
                last_part = part
                yield (i, path, False), part
        if failed is not None:
            yield (i, path, True), failed
        else:
            assert last_part is not None
            p = last_part
            yield (i, path, True), Patches(p.patches[:0], p.starts[:0], p.ends[:0], p.duration)
