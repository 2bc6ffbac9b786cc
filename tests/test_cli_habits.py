"""The command line's habits: python -m, help for every option with its default, one
line for a system error, messages through the progress bar, no carriage returns in a log,
--quiet; and the reader claims every suffix the slide reader reads."""

import argparse
import subprocess
import sys
import warnings
from pathlib import Path

from napari_cinuseg.cli.entry import main
from napari_cinuseg.cli.parser import build_parser


def _actions(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _actions(sub)
        else:
            yield parser.prog, action


def test_python_m_runs_the_command_without_importing_torch():
    code = (
        "import runpy, sys; sys.argv = ['cinuseg', '--help']\n"
        "try:\n"
        "    runpy.run_module('napari_cinuseg', run_name='__main__')\n"
        "except SystemExit as e:\n"
        "    assert e.code == 0\n"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "train-base" in out and out.strip().endswith("False")
    done = subprocess.run([sys.executable, "-m", "napari_cinuseg", "methods"], capture_output=True, text=True)
    assert done.returncode == 0 and "cinuseg+acl+drr" in done.stdout


def test_the_napari_reader_and_writer_import_without_torch():
    code = (
        "import sys, napari_cinuseg.plugin.reader, napari_cinuseg.plugin.writer, napari_cinuseg.io.export; "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_option_has_help_and_shows_its_default():
    missing = [
        f"{prog} {a.option_strings}"
        for prog, a in _actions(build_parser())
        if a.option_strings and not a.help and a.help != argparse.SUPPRESS
    ]
    assert missing == []
    text = build_parser()._subparsers._group_actions[0].choices["segment"].format_help()
    assert "(default: 512)" in text and "(default: auto)" in text
    top = build_parser().format_help()
    assert "``" not in top and "class-incremental" in top


def test_a_folder_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    from napari_cinuseg.model.file import BUNDLED_MODEL

    def refuse(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", refuse)
    code = main(
        ["segment", str(Path(__file__).parent), "--model", str(BUNDLED_MODEL), "--out", str(tmp_path / "masks")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "permission denied" in err and "Traceback" not in err


def test_a_log_gets_plain_lines_and_quiet_gets_none(shared_data, tmp_path, capsys):
    common = [
        "--data",
        str(shared_data / "consep"),
        "--iterations",
        "20",
        "--batch-size",
        "2",
        "--crop-size",
        "64",
        "--device",
        "cpu",
    ]
    assert main(["train-base", *common, "--classes", "Epithelial", "--out", str(tmp_path / "a.cinuseg.pt")]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err  # standard error is not a terminal here: no redrawn bar
    lines = err.splitlines()
    assert any(line.startswith("step 0: 20/20 it (100%)") for line in lines)
    assert sum("/20 it (" in line for line in lines) <= 11  # a line per tenth, not per iteration
    assert lines[-1].startswith("saved ")
    assert main(["-q", "train-base", *common, "--classes", "Epithelial", "--out", str(tmp_path / "b.cinuseg.pt")]) == 0
    assert capsys.readouterr().err == ""
    assert main(["info", "--quiet", str(tmp_path / "b.cinuseg.pt")]) == 0  # results still print
    assert "Epithelial" in capsys.readouterr().out


def test_messages_go_through_the_bar_on_a_terminal():
    import io

    from napari_cinuseg.cli.console import Console

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    console = Console(stream=stream)
    bar = console.bar(10, "it", "step 1")
    bar.update_to(3, loss="0.5")
    console.say("saved x")
    bar.close()
    text = stream.getvalue()
    # the bar is cleared before the message and drawn again after it: never "…]saved x"
    assert "saved x\n" in text and "]saved x" not in text
    assert text.index("saved x") < text.rindex("3/10")


def test_predict_on_a_read_only_array_warns_nothing(consep):
    from napari_cinuseg.model.file import BUNDLED_MODEL, load_model

    image = consep.items[0].image.copy()
    image.flags.writeable = False  # as napari gives a layer's data
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_model(BUNDLED_MODEL).predict(image)
    assert out.shape == image.shape[:2]


def test_the_reader_claims_every_suffix_the_slide_reader_reads():
    import yaml

    from napari_cinuseg.io.slides import TIFF_SUFFIXES
    from napari_cinuseg.plugin.reader import PLAIN_SUFFIXES, get_reader

    manifest = yaml.safe_load((Path(__file__).parents[1] / "src" / "napari_cinuseg" / "napari.yaml").read_text())
    patterns = set(manifest["contributions"]["readers"][0]["filename_patterns"])
    for suffix in TIFF_SUFFIXES + PLAIN_SUFFIXES:
        assert f"*{suffix}" in patterns, suffix
        assert get_reader(f"slide{suffix}") is not None, suffix
