"""One set of conventions across `btmri` subcommands (btmri/cli_conventions.py): the
common flags, the exit-code scheme, and errors a person can act on. Everything here
runs without a pipeline run or a server (each mistake is caught before either)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from btmri.cli_conventions import EXIT_REFUSED, EXIT_UNAVAILABLE, EXIT_USAGE
from pipeline.cli import QUICK_PRESET, _apply_preset, build_parser, main

SUBCOMMANDS = (
    "synth",
    "prepare",
    "slices",
    "run",
    "compile",
    "serve",
    "predict",
    "gradcam",
    "report",
    "audit",
    "monitor",
    "evaluate",
    "results",
    "review",
)
# Commands that read what `btmri run` wrote: they find it through --work-dir.
READS_A_RUN = ("run", "serve", "report", "audit", "monitor", "evaluate", "results", "review")


def _subparsers():
    parser = build_parser()
    (action,) = [a for a in parser._actions if a.dest == "command"]
    return action.choices


def test_every_subcommand_has_the_common_flags():
    commands = _subparsers()
    assert set(commands) == set(SUBCOMMANDS)
    for name, p in commands.items():
        flags = {s for a in p._actions for s in a.option_strings}
        assert {"-v", "--verbose", "-q", "--quiet"} <= flags, name
        assert ("--work-dir" in flags) == (name in READS_A_RUN), name


def test_verbose_and_quiet_exclude_each_other(capsys):
    with pytest.raises(SystemExit) as raised:
        build_parser().parse_args(["report", "-v", "-q"])
    assert raised.value.code == EXIT_USAGE
    assert "not allowed with argument" in capsys.readouterr().err


def test_the_quick_preset_fills_only_what_was_not_given():
    argv = ["run", "--quick", "--epochs", "3", "--min-acceptance=0.7"]  # flags, not field names
    args = build_parser().parse_args(argv)
    args.argv = argv
    _apply_preset(args, QUICK_PRESET)
    assert args.epochs == 3 and args.abstention_min_acceptance == 0.7  # given: kept
    assert args.batch_size == QUICK_PRESET["batch_size"] != build_parser().parse_args(["run"]).batch_size
    assert args.synthetic_per_class == QUICK_PRESET["synthetic_per_class"]
    assert args.accuracy_lower_bound == QUICK_PRESET["accuracy_lower_bound"]


def _png(path):
    import cv2

    cv2.imwrite(str(path), np.full((32, 32), 128, np.uint8))
    return str(path)


def _free_port() -> int:
    from serving.process import free_ports

    (port,) = free_ports(1)
    return port


# Each: argv (with {tmp} for a fresh folder, {port} for a port nothing listens on,
# {png} for a readable image), the exit code, and what the error line must say.
MISTAKES = [
    (["synth", "--out", "{tmp}/a_file"], EXIT_USAGE, "cannot write to"),
    (["prepare", "--data-dir", "{tmp}/nowhere", "--out", "{tmp}/out"], EXIT_USAGE, "does not exist"),
    (["prepare", "--data-dir", "{tmp}", "--out", "{tmp}/out"], EXIT_USAGE, "class folders"),
    (["run", "--quick", "--data-dir", "{tmp}"], EXIT_USAGE, "drop --data-dir"),
    (["run", "--data-dir", "{tmp}/nowhere", "--work-dir", "{tmp}/w"], EXIT_USAGE, "does not exist"),
    (
        ["compile", "--data-root", "x", "--pipeline-root", "p", "--serving-dir", "s", "--target", "vertex"],
        EXIT_USAGE,
        "--vertex-project is required",
    ),
    (["serve", "--work-dir", "{tmp}"], EXIT_USAGE, "run `btmri run` first"),
    (
        ["serve", "--model-base-path", "{tmp}", "--model-config-file", "{tmp}/c"],
        EXIT_USAGE,
        "not both",
    ),
    (["predict", "--timeout", "1", "{tmp}/missing.png"], EXIT_USAGE, "1 of 1 images failed"),
    (["predict", "--server", "127.0.0.1:{port}", "--timeout", "1", "{png}"], EXIT_UNAVAILABLE, "unavailable"),
    (
        ["predict", "--rest", "127.0.0.1:{port}", "--timeout", "1", "{png}"],
        EXIT_UNAVAILABLE,
        "unavailable",
    ),
    (["gradcam", "--alpha", "2", "{png}"], EXIT_USAGE, "--alpha must be in [0, 1]"),
    (
        ["gradcam", "--server", "127.0.0.1:{port}", "--timeout", "1", "--out", "{tmp}/g", "{png}"],
        EXIT_UNAVAILABLE,
        "unavailable",
    ),
    (["report", "--work-dir", "{tmp}"], EXIT_USAGE, "run `btmri run` first, or pass the run's --work-dir"),
    (["audit", "{tmp}", "--work-dir", "{tmp}"], EXIT_USAGE, "run `btmri run` first"),
    (["audit", "{tmp}/no_boxes", "--server", "127.0.0.1:{port}"], EXIT_USAGE, "no box folder"),
    (["monitor", "--request-log", "{tmp}", "--work-dir", "{tmp}"], EXIT_USAGE, "no request logs"),
    (["evaluate", "{tmp}", "--work-dir", "{tmp}"], EXIT_USAGE, "no class folders"),
    (["review", "--request-log", "{tmp}", "--work-dir", "{tmp}"], EXIT_USAGE, "no request logs"),
    (["review", "--export", "{tmp}/out", "--work-dir", "{tmp}"], EXIT_USAGE, "no reviews in"),
]


@pytest.mark.parametrize("argv, code, says", MISTAKES, ids=[" ".join(m[0][:2]) for m in MISTAKES])
def test_a_common_mistake_gets_its_code_and_an_error_line(argv, code, says, tmp_path, capsys):
    (tmp_path / "a_file").write_text("")
    values = {"tmp": str(tmp_path), "port": str(_free_port()), "png": _png(tmp_path / "scan.png")}
    argv = [a.format(**values) for a in argv]
    started = time.monotonic()
    assert main(argv) == code
    err = capsys.readouterr().err
    assert f"btmri {argv[0]}: error: " in err and says in err, err
    assert "Traceback" not in err
    if code == EXIT_UNAVAILABLE:  # --timeout bounds the connection attempts too
        assert time.monotonic() - started < 1 + 1.5


def test_the_scheme_is_in_the_help(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    for code in (EXIT_REFUSED, EXIT_USAGE, EXIT_UNAVAILABLE):
        assert f"; {code} " in out


def _actions(command: str) -> dict:
    """{dest: action} of one subcommand's parser."""
    return {a.dest: a for a in _subparsers()[command]._actions}


@pytest.mark.parametrize("command", ["run", "compile"])
def test_every_setting_is_declared_once_and_its_flag_says_its_default(command):
    """Each training setting and gate has exactly one flag on `run` and `compile`, whose
    default is the field's own (btmri.documents.option), and no flag of theirs sets a
    configuration field that is not declared that way."""
    import dataclasses

    from btmri.cli_conventions import option_fields
    from btmri.documents import TRAINER_DEFAULTS, TrainingSettings
    from pipeline.config import GATE_OPTIONS, PipelineConfig

    parser = _subparsers()[command]
    declared = option_fields(TrainingSettings) + option_fields(PipelineConfig, GATE_OPTIONS)
    for f in declared:
        flags = [a for a in parser._actions if a.dest == f.name]
        assert len(flags) == 1, f.name
        default = getattr(TRAINER_DEFAULTS, f.name, f.default)
        assert flags[0].default == default == f.default, f.name
        assert flags[0].help and flags[0].help.startswith(f.metadata["help"]), f.name
    # Every TrainingSettings field is either a flag or declared without one (cli=False).
    names = {f.name for f in declared}
    for f in dataclasses.fields(TrainingSettings):
        assert f.name in names or f.metadata.get("cli") is False, f.name
    # No flag of these commands writes a config field other than through its option().
    config_fields = {f.name for f in dataclasses.fields(PipelineConfig)}
    undeclared = {a.dest for a in parser._actions} & config_fields - names - {"enable_cache"}
    # Paths are the command's own flags (run: from --work-dir; compile: required).
    assert undeclared <= {"pipeline_root", "serving_dir", "data_root", "box_dir"}, undeclared


def test_every_server_option_is_declared_once():
    """`btmri serve`'s flags are ServerOptions' fields, each once, with the field's default."""
    import dataclasses

    from btmri.cli_conventions import option_fields
    from btmri.documents import ServerOptions

    actions = _actions("serve")
    declared = option_fields(ServerOptions)
    for f in declared:
        assert actions[f.name].default == f.default, f.name
        assert sum(a.dest == f.name for a in _subparsers()["serve"]._actions) == 1, f.name
    for f in dataclasses.fields(ServerOptions):
        assert f in declared or f.metadata.get("cli") is False, f.name
    own = {"help", "work_dir", "verbose", "quiet"}
    assert set(actions) - own == {f.name for f in declared}


def test_every_prepare_option_is_declared_once():
    import dataclasses

    from btmri.cli_conventions import option_fields
    from data_prep.prepare import PrepareOptions

    actions = _actions("prepare")
    declared = option_fields(PrepareOptions)
    for f in declared:
        assert actions[f.name].default == f.default, f.name
    for f in dataclasses.fields(PrepareOptions):
        assert f in declared or f.metadata.get("cli") is False or f.name in ("data_dir", "out_dir"), f.name
    assert set(actions) - {"help", "data_dir", "out", "verbose", "quiet"} == {f.name for f in declared}
    # `run` prepares with the same fields: the same defaults.
    run = _actions("run")
    for name in ("drop_cross_split_duplicates", "split_unit", "hold_out_collection"):
        assert run[name].default == actions[name].default
