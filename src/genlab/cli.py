"""The ``genlab`` command. Each sub-command lives in ``genlab.commands``; bad input ends with one line on stderr
and exit status 2 (``genlab.errors``)."""

from __future__ import annotations

import sys

from genlab import __version__
from genlab.commands import data, denoise, energy, evaluate, inpaint, report, serve, train
from genlab.commands.flags import Parser
from genlab.errors import one_line_errors

COMMANDS = (train, data, evaluate, energy, denoise, inpaint, report, serve)  # in the order --help lists them


def build_parser() -> Parser:
    parser = Parser(prog="genlab", description="Train, evaluate and visualise the classic deep generative "
                    "models as energy-based models.")
    parser.add_argument("--version", action="version", version=f"genlab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and args.model is None and not args.resume:
        parser.error("train needs a MODEL (one of the listed choices) or --resume RUN_DIR")
    return one_line_errors(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
