"""The CLI's parser errors: a one-line usage, then the error, and for a misspelled key the closest valid one.

jsonargparse prints the whole usage of a subcommand (about 70 lines for ``fit`` here) before its error, and says
of a misspelled key only that it is not accepted. :class:`DSLArgumentParser` prints one usage line and the error
last, and names the closest valid key (``difflib``). :func:`raised_in_data_setup` tells the CLI which errors are
a data module's own checks in ``setup`` (to be shown the same way).
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import re
from typing import NoReturn

from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningArgumentParser


class DSLArgumentParser(LightningArgumentParser):
    """The CLI's parser: on a bad argument, a one-line usage and the error last, an unknown key with its closest match.

    jsonargparse prints the whole usage (about 70 lines here) before the error; the user needs the error line and,
    for a misspelled key, the key meant: ``error: `model.init_args.split_idx` is not a valid key ...: did you mean
    `model.init_args.split_index`?``. ``--help`` still prints everything.
    """

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Exit with status 2 after a one-line usage and ``message`` (an unknown key explained, its closest match)."""
        if self.exit_on_error:  # the parsers jsonargparse nests for class_path values raise to it, unexplained
            message = _explain_unknown_key(message, getattr(ex, "subcommand_parser", None) or self)
        super().error(message, ex)

    def format_usage(self) -> str:
        """One line: the full usage of the subcommands runs to ~70 lines and would bury the error after it."""
        usage = super().format_usage()
        if usage.count("\n") <= 3:
            return usage
        return f"usage: {self.prog} [-h] [-c CONFIG] [--print_config] [--KEY VALUE ...]\n"


def raised_in_data_setup(err: BaseException, datamodule: LightningDataModule) -> bool:
    """Whether ``err`` was raised inside ``datamodule``'s ``setup`` or ``prepare_data`` (a frame of its traceback)."""
    traceback = err.__traceback__
    while traceback is not None:
        frame = traceback.tb_frame
        if frame.f_code.co_name in ("setup", "prepare_data") and frame.f_locals.get("self") is datamodule:
            return True
        traceback = traceback.tb_next
    return False


_UNRECOGNIZED = re.compile(r"unrecognized arguments: (.+)")
_NOT_ACCEPTED_OPTION = re.compile(r"does not accept option '([^']+)'")
_OPTION_NOT_ACCEPTED = re.compile(r"Option '([^']+)' is not accepted")
_PARSER_KEY = re.compile(r'Parser key "([^"]+)"')
_CLASS_PATH = re.compile(r"class_path[= ]'([\w.]+)'")


def _explain_unknown_key(message: str, parser: argparse.ArgumentParser) -> str:
    """``message``, or for an unknown key one line that names it and the closest valid key (``difflib``).

    jsonargparse reports an unknown key in three ways: ``unrecognized arguments: --a.b=1`` (command line),
    ``Subcommand 'fit' does not accept option 'a.b'`` (config file), and, under a class given by ``class_path``
    (``model``, ``data``, an optimizer), ``Parser key "model": ... class_path '...' ... Option 'x' is not
    accepted``. Any other message is returned as it is; so is any message this cannot read.
    """
    try:
        nested = _OPTION_NOT_ACCEPTED.search(message)
        if nested is not None:
            return _explain_class_option(message, nested)
        unrecognized = _UNRECOGNIZED.search(message)
        keys = re.findall(r"--([^\s=]+)", unrecognized.group(1)) if unrecognized else []
        option = _NOT_ACCEPTED_OPTION.search(message)
        keys += [option.group(1)] if option else []
        if not keys:
            return message
        candidates = _parser_keys(parser)
        lines = []
        for key in keys:
            match = difflib.get_close_matches(key, candidates, n=1, cutoff=0.6)
            hint = f": did you mean `{match[0]}`?" if match else " (see --help for the valid keys)."
            lines.append(f"`{key}` is not a valid key{hint}")
        return "\n".join(lines)
    except Exception:  # a message this cannot read stays as jsonargparse wrote it
        return message


def _explain_class_option(message: str, nested: re.Match[str]) -> str:
    """The unknown init argument ``nested`` of the class in ``message``, its full key and the closest valid one."""
    name, before = nested.group(1), message[: nested.start()]
    line_end = message.find("\n", nested.end())
    same_line = _CLASS_PATH.search(message[nested.end() : None if line_end < 0 else line_end])
    class_paths = _CLASS_PATH.findall(before)
    class_path = same_line.group(1) if same_line else (class_paths[-1] if class_paths else None)
    if class_path is None:
        return message
    prefix = ".init_args.".join(_PARSER_KEY.findall(before)) + ".init_args."
    arguments = _init_arguments(class_path)
    match = difflib.get_close_matches(name, arguments, n=1, cutoff=0.6)
    hint = f": did you mean `{prefix}{match[0]}`?" if match else f"; its arguments: {', '.join(arguments)}."
    return f"`{prefix}{name}` is not a valid key ({class_path} has no argument `{name}`){hint}"


def _init_arguments(class_path: str) -> list[str]:
    """The init arguments jsonargparse accepts for the class at ``class_path``, in signature order."""
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(cls)
    return [a.dest for a in parser._actions if a.dest != "help" and not a.dest.endswith(".help")]


def _parser_keys(parser: argparse.ArgumentParser) -> list[str]:
    """Every key of ``parser`` and of its subcommands' parsers (``trainer.max_epochs``, ``model``, ...)."""
    keys: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for subparser in action.choices.values():
                keys += _parser_keys(subparser)
        elif action.dest not in ("help", argparse.SUPPRESS) and not action.dest.endswith(".help"):
            keys.append(action.dest)
    return keys
