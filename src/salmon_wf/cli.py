"""`salmon-wf` command line: one sub-command per module, imported only when used.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`; the first line of
its docstring is the command's help. Importing lazily keeps `salmon-wf <cheap-stage>` from
paying for a torch import it does not need.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from types import ModuleType

COMMANDS: dict[str, str] = {
    "tiny-model": "salmon_wf.model.tiny",
    "import-gguf": "salmon_wf.model.gguf_import",
    "import-hf": "salmon_wf.model.hf_import",
    "generate": "salmon_wf.engine.generate_cli",
    "clean-prompts": "salmon_wf.stages.clean",
    "sample": "salmon_wf.stages.sample",
    "gather": "salmon_wf.stages.gather",
    "pair": "salmon_wf.stages.pair",
    "judge": "salmon_wf.stages.judge",
    "aggregate": "salmon_wf.stages.aggregate",
}


def _load(name: str) -> ModuleType:
    return importlib.import_module(COMMANDS[name])


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="salmon-wf", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        if only is not None and name != only:
            sub.add_parser(name)
            continue
        module = _load(name)
        doc = (module.__doc__ or "").strip().splitlines()
        command = sub.add_parser(name, help=doc[0] if doc else None, description=module.__doc__)
        module.add_arguments(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    args = build_parser(only).parse_args(argv)
    return int(_load(args.command).run(args) or 0)


def run_and_leave(argv: list[str] | None = None) -> int:
    """`main`, then the ranks leave their process group together (for a process that ends).

    A process that exits with its gloo group alive can abort in gloo's threads ("terminate
    called without an active exception", 1 run in 3 under torchrun here) after all its work
    is done, and NCCL warns. A failing command skips this: its exception ends the process.
    """
    code = main(argv)
    if "torch.distributed" in sys.modules:  # only model commands imported torch
        from salmon_wf.model.parallel import leave_process_group

        leave_process_group()
    return code


def program() -> None:
    """The `salmon-wf` executable."""
    sys.exit(run_and_leave())


if __name__ == "__main__":
    program()
