"""The quiet console: what a `btmri` command shows on the terminal, what only its log gets.

`quiet_environment()` runs before TensorFlow is imported (it only takes effect then):
TensorFlow's C++ start-up notes and errors (CUDA factory registration on machines
without a GPU), FutureWarnings and DeprecationWarnings from Google client libraries
(in every Beam worker too, which inherit the environment) and pip's chatter when TFX
installs the user-code wheel stay off the terminal. `-v` keeps them.

`CapturedRun` is the console of a pipeline run: file descriptors 1 and 2 go to the
run log, the terminal gets the component lines, one progress line per training
epoch (read from Keras' own epoch lines) and whatever the caller prints after.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import time
import warnings

QUIET_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3",  # C++ INFO, WARNING and ERROR start-up lines (CUDA probing)
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
    "PIP_QUIET": "1",  # TFX's `pip install` of the user-code wheel
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
    "GRPC_VERBOSITY": "ERROR",
}
VERBOSE_ENVIRONMENT = {"TF_CPP_MIN_LOG_LEVEL": "0"}


def quiet_environment(verbose: bool = False, tf_warnings: bool = True) -> None:
    """Sets the variables above (values the user set win) and the same warning filters
    in this process. Without `tf_warnings`, TensorFlow's Python warnings (deprecation
    notices from TFMA and the like) are dropped too; `btmri run` keeps them for its log."""
    for name, value in (VERBOSE_ENVIRONMENT if verbose else QUIET_ENVIRONMENT).items():
        os.environ.setdefault(name, value)
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        if not tf_warnings:
            logging.getLogger("tensorflow").setLevel(logging.ERROR)


# ── A run's console: the terminal gets progress, the log gets everything ──────────
# Keras' `fit(verbose=2)` lines: "Epoch 3/80", then "12/12 - 9s - loss: 0.81 - ... - lr: 0.001".
_EPOCH = re.compile(r"^Epoch (\d+)/(\d+)\s*$")
_ANNEAL = re.compile(r"^Training schedule: annealing over epochs (\d+)-(\d+)")
_FIGURE = re.compile(r"(\w+): (-?[0-9.]+(?:e[-+]?\d+)?)")
SHOWN_FIGURES = ("loss", "accuracy", "val_loss", "val_accuracy")


class Terminal:
    """Lines for the user; a transient status line (the epoch bar) on a TTY."""

    def __init__(self, stream):
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._status = False

    def line(self, text: str) -> None:
        with self._lock:
            if self._status:
                self.stream.write("\n")
                self._status = False
            self.stream.write(text + "\n")
            self.stream.flush()

    def status(self, text: str, final: bool = False) -> None:
        """Rewrites the status line on a TTY; elsewhere only `final` lines are printed."""
        with self._lock:
            if self.tty:
                self.stream.write("\r\033[K" + text + ("\n" if final else ""))
                self._status = not final
            elif final:
                self.stream.write(text + "\n")
            self.stream.flush()


class EpochProgress:
    """Turns Keras' per-epoch lines into one progress line per epoch."""

    def __init__(self, terminal: Terminal, width: int = 20):
        self.terminal = terminal
        self.width = width
        self.epoch = self.epochs = self.limit = 0
        self.started = time.monotonic()

    def feed(self, line: str) -> None:
        line = line.strip()
        if match := _EPOCH.match(line):
            self.epoch, limit = int(match[1]), int(match[2])
            if self.epoch == 1:
                self.started = time.monotonic()
                self.epochs, self.limit = limit, limit
            self.terminal.status(self._bar(self.epoch - 1) + f"  epoch {self._of()}")
            return
        if match := _ANNEAL.match(line):
            # The converge schedule knows its last epoch now (components/training/schedule.py).
            self.epochs = int(match[2])
            self.terminal.line("  " + line)
            return
        if not self.epochs or "loss: " not in line:
            return
        figures = dict(_FIGURE.findall(line))
        if "loss" not in figures:
            return
        shown = [f"{k} {float(figures[k]):.4f}" for k in SHOWN_FIGURES if k in figures]
        elapsed = time.monotonic() - self.started
        left = elapsed / self.epoch * (self.epochs - self.epoch) if self.epoch else 0.0
        # Before the converge schedule's anneal only the limit is known: "at most".
        bound = "~" if self.epochs < self.limit else "at most "
        text = (
            f"{self._bar(self.epoch)}  epoch {self._of()}  "
            + "  ".join(shown)
            + f"  ({_minutes(elapsed)} elapsed, {bound}{_minutes(left)} left)"
        )
        # On a TTY the bar updates in place and stays after the last epoch; elsewhere
        # every epoch is one line.
        self.terminal.status(text, final=not self.terminal.tty or self.epoch == self.epochs)

    def _of(self) -> str:
        if self.epochs < self.limit:
            return f"{self.epoch}/{self.epochs} (stops early; limit {self.limit})"
        return f"{self.epoch}/{self.epochs}"

    def _bar(self, done: int) -> str:
        filled = round(self.width * done / self.epochs) if self.epochs else 0
        return "  [" + "#" * filled + "." * (self.width - filled) + "]"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class CapturedRun:
    """Everything written to file descriptors 1 and 2 during the block (this process,
    TensorFlow's C++ logging, Beam workers, pip) goes to `log_path`; the terminal gets
    only what is written through `terminal`, plus a progress line per training epoch.
    With `verbose`, everything is also copied to the terminal; with `quiet`, the
    terminal gets nothing (the log still gets everything)."""

    def __init__(self, log_path: str, verbose: bool = False, quiet: bool = False):
        self.log_path = log_path
        self.verbose = verbose and not quiet
        self.quiet = quiet
        self.terminal: Terminal | None = None
        self._saved: tuple[int, int] | None = None
        self._streams: tuple | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> CapturedRun:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        self._saved = (os.dup(1), os.dup(2))
        self.terminal = Terminal(
            open(os.devnull, "w", encoding="utf-8")
            if self.quiet
            else os.fdopen(os.dup(self._saved[0]), "w", buffering=1, encoding="utf-8", errors="replace")
        )
        progress = EpochProgress(self.terminal)
        read_end, write_end = os.pipe()
        log = open(self.log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        self._thread = threading.Thread(
            target=self._pump, args=(read_end, log, progress), name="run-log", daemon=True
        )
        self._thread.start()
        os.dup2(write_end, 1)
        os.dup2(write_end, 2)
        os.close(write_end)
        # Python-level writes too, even where sys.stdout is not file descriptor 1 (a
        # notebook, pytest's capture).
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = (
            open(fd, "w", buffering=1, closefd=False, encoding="utf-8", errors="replace") for fd in (1, 2)
        )
        return self

    def _pump(self, read_end: int, log, progress: EpochProgress) -> None:
        with os.fdopen(read_end, "rb") as pipe, log:
            for raw in pipe:
                text = raw.decode("utf-8", errors="replace")
                log.write(text)
                if self.verbose:
                    self.terminal.line(text.rstrip("\n"))
                else:
                    progress.feed(text)

    def __exit__(self, *exc) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.close()  # flushes; file descriptors 1 and 2 stay open (closefd=False)
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = self._streams
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        # The pipe closes when the last writer does; a Beam worker still alive keeps it
        # open, and its output then still reaches the log.
        self._thread.join(timeout=5.0)
        self.terminal.stream.flush()
        if not self._thread.is_alive():
            self.terminal.stream.close()
