"""What every `btmri` subcommand shares: exit codes, error lines and the common flags.

One scheme for all subcommands, so a script can tell "the model was refused" from
"you typed it wrong" from "nothing is listening":

    0  success
    1  it ran, but refused: a gate refused the model, anomalies were found, an audit
       or evaluate bound was missed
    2  bad usage or input: a wrong flag combination, a missing or unreadable file, an
       empty split, no run in the work folder yet (argparse's own usage errors are 2 too)
    3  the model server is unavailable
    4  the pipeline failed: a component crashed (its log says why)

Every expected failure prints one line, `btmri <command>: error: <what to do>`, to
stderr and returns one of these codes; none prints a traceback.
"""

from __future__ import annotations

import argparse
import sys

from btmri.layout import DEFAULT_LAYOUT

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNAVAILABLE = 3
EXIT_FAILED = 4

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success",
    EXIT_REFUSED: "it ran, but refused: a gate refused the model, anomalies found, a bound missed",
    EXIT_USAGE: "bad usage or input: flags, a missing or unreadable file, an empty split, no run yet",
    EXIT_UNAVAILABLE: "the model server is unavailable",
    EXIT_FAILED: "the pipeline failed: a component crashed (see its log)",
}


def exit_code_text() -> str:
    """The scheme as one line of help text."""
    return "Exit codes: " + "; ".join(f"{code} {meaning}" for code, meaning in EXIT_CODES.items()) + "."


def error(command: str, message: object, code: int = EXIT_USAGE) -> int:
    """Prints `btmri <command>: error: <message>` to stderr and returns `code`."""
    print(f"btmri {command}: error: {message}", file=sys.stderr)
    return code


def add_output_flags(p: argparse.ArgumentParser, quiet_help: str = "no progress output") -> None:
    """-v/--verbose and -q/--quiet, the same on every subcommand."""
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="show more: TensorFlow's start-up notes, library warnings and logs",
    )
    group.add_argument("-q", "--quiet", action="store_true", help=f"{quiet_help}; results still print")


def add_work_dir(p: argparse.ArgumentParser, reads: str) -> None:
    """--work-dir: the run folder `btmri run` writes; `reads` says what this command takes from it."""
    p.add_argument(
        "--work-dir",
        default=DEFAULT_LAYOUT.work_dir,
        metavar="DIR",
        help=f"the run's folder, as given to `btmri run`: {reads} (default %(default)s)",
    )


def _flag(f) -> str:
    name = (f.metadata.get("flag") or f.name).replace("_", "-")
    return f"--no-{name}" if f.default is True else f"--{name}"


def flag_for(cls, name: str) -> str:
    """The flag of field `name` of `cls` (an option field's own), else --the-name."""
    import dataclasses

    for f in dataclasses.fields(cls):
        if f.name == name and "help" in f.metadata:
            return _flag(f)
    return "--" + name.replace("_", "-")


def option_fields(cls, names: tuple[str, ...] | None = None) -> list:
    """The fields of dataclass `cls` declared with btmri.documents.option() that have a
    flag (cli=True), in declaration order; `names`: only these."""
    import dataclasses

    return [
        f
        for f in dataclasses.fields(cls)
        if "help" in f.metadata and f.metadata.get("cli", True) and (names is None or f.name in names)
    ]


def add_options(p: argparse.ArgumentParser, cls, names: tuple[str, ...] | None = None) -> None:
    """One flag per option field of `cls`: name, type, default, choices and help from the
    field, so each is declared once (btmri.documents.option)."""
    for f in option_fields(cls, names):
        meta = f.metadata
        flags = [_flag(f), *meta.get("aliases", ())]
        if isinstance(f.default, bool):
            action = "store_false" if f.default else "store_true"
            p.add_argument(*flags, dest=f.name, action=action, default=f.default, help=meta["help"])
            continue
        kind = type(f.default) if f.default is not None else str
        extra = {"metavar": meta["metavar"]} if meta.get("metavar") else {}
        if meta.get("choices"):
            extra["choices"] = meta["choices"]
        p.add_argument(
            *flags,
            dest=f.name,
            type=kind,
            default=f.default,
            help=meta["help"] + ("" if f.default in (None, "") else " (default %(default)s)"),
            **extra,
        )


def options_from(args: argparse.Namespace, cls, names: tuple[str, ...] | None = None) -> dict:
    """{field name: parsed value} for the option fields of `cls` that add_options added."""
    return {f.name: getattr(args, f.name) for f in option_fields(cls, names)}
