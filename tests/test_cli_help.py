"""The command line's help lists what the engine has, from the engine, not from a copy."""

from napari_cinuseg.cli.parser import build_parser
from napari_cinuseg.methods import available


def test_the_method_options_list_every_registered_method():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command, option in (("step", "--method"), ("benchmark", "--methods")):
        text = " ".join(sub[command].format_help().split())
        listed = text.rsplit(f"{option} {option[2:].upper()}", 1)[1].split("(default")[0]
        for name in available():
            assert name in listed.replace("- ", "-"), (command, name)
    assert {"ewf-plop", "nest-plop"} <= set(available())
