"""`salmon-wf` command line: one sub-command per module, imported only when used.

Each command module exposes `add_arguments(parser)` and `run(args) -> int`; the first line of
its docstring is the command's help. A command lives in the module that does its job, named for
it: the workflow's stages in stages/ (a stage is a rule's command; its flags sit beside the
settings they fill), the model-directory tools in model/ (tiny-model, import-gguf, import-hf),
the one-prompt demo of the engine in engine/generate.py. COMMANDS is the one index.

Importing lazily keeps `salmon-wf <cheap-stage>` from paying for a torch import it does not
need. `main` is the one error boundary: a user error ends any command with one line,
`salmon-wf <command>: error: <file>[ line N][: field]: <what>`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from types import ModuleType

from salmon_wf.errors import SalmonError

COMMANDS: dict[str, str] = {
    "tiny-model": "salmon_wf.model.tiny",
    "import-gguf": "salmon_wf.model.gguf_import",
    "import-hf": "salmon_wf.model.hf_import",
    "generate": "salmon_wf.engine.generate",
    "clean-prompts": "salmon_wf.stages.clean",
    "sample": "salmon_wf.stages.sample",
    "gather": "salmon_wf.stages.gather",
    "pair": "salmon_wf.stages.pair",
    "judge": "salmon_wf.stages.judge",
    "languages": "salmon_wf.stages.languages",
    "pairs-table": "salmon_wf.stages.pairs_table",
    "aggregate": "salmon_wf.stages.aggregate.cli",
    "ledger": "salmon_wf.stages.ledger",
    "calibrate": "salmon_wf.stages.calibrate.cli",
    "status": "salmon_wf.status",
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


# OSErrors that name a file the user gave (an input that is not there or not readable); any
# other exception escaping a command is a bug and keeps its traceback.
FILE_ERRORS = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)
FAILED = 1  # exit status of a command ended by a user error
# How long a rank other than 0 holds its report back. The ranks of a group read the same inputs
# and usually fail alike: rank 0 reports, and torchrun ends the other ranks when it exits. A
# rank that left at once could get rank 0 killed before it printed; one that fails alone still
# reports, this much later.
RANK_ZERO_GRACE_S = 20.0


def error_line(command: str, exc: BaseException) -> str:
    """`salmon-wf <command>: error: <file>[ line N][: field]: <what>`, on one line.

    Messages quoted from libraries (torch's unpickler, safetensors) can span lines: they are
    joined so the report stays one line.
    """
    if isinstance(exc, OSError) and not isinstance(exc, SalmonError) and exc.filename:
        message = f"{exc.filename}: {exc.strerror or exc}"
    else:
        message = str(exc)
    one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    return f"salmon-wf {command}: error: {one_line}"


# What torch.distributed raises when a peer rank died, hung past the timeout or closed its
# connection: DistError subclasses (NCCL, the store) or gloo's plain RuntimeErrors, which name
# gloo's transport in their text.
_GLOO_TRANSPORT = "gloo/transport/"


def is_lost_peer(exc: BaseException) -> bool:
    """Whether an exception is the group's communication failing (not a bug in a command)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(exc, getattr(dist, "DistError", ())):
        return True
    return isinstance(exc, RuntimeError) and _GLOO_TRANSPORT in str(exc)


def lost_peer_line(command: str, exc: BaseException, rank: int, world: int) -> str:
    """One line for a rank whose group broke: what happened, and that a rerun resumes."""
    cause = error_line(command, exc).split(": error: ", 1)[1]
    return (
        f"salmon-wf {command}: error: rank {rank} of {world} lost its process group ({cause});"
        " finished records stay in the shard's .partial file and a rerun resumes from them"
    )


def _group_of_several() -> tuple[int, int] | None:
    """(rank, world size) when this process is one rank of a group of several, else None."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return None
    world = dist.get_world_size()
    return (dist.get_rank(), world) if world > 1 else None


def _is_rank_zero() -> bool:
    """Rank 0 of the group (or of torchrun's world before the group exists) reports errors."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in COMMANDS else None
    return build_parser(only).parse_args(argv)


def run_command(argv: list[str]) -> int:
    """Run one command with no error boundary: its errors reach the caller (tests)."""
    args = parse(argv)
    return int(_load(args.command).run(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Run one command; a user error (SalmonError, a missing input) is one line and exit 1."""
    args = parse(argv)
    try:
        return int(_load(args.command).run(args) or 0)
    except (SalmonError, *FILE_ERRORS) as exc:
        if not _is_rank_zero():
            time.sleep(RANK_ZERO_GRACE_S)  # usually ended here, once rank 0 has reported
        print(error_line(args.command, exc), file=sys.stderr, flush=True)
        return FAILED
    except RuntimeError as exc:
        group = _group_of_several()
        if group is None or not is_lost_peer(exc):
            raise
        rank, world = group  # no grace: the rank that is gone may be rank 0
        print(lost_peer_line(args.command, exc, rank, world), file=sys.stderr, flush=True)
        return FAILED


def run_and_leave(argv: list[str] | None = None) -> int:
    """`main`, then the ranks leave their process group together (for a process that ends).

    A process that exits with its gloo group alive can abort in gloo's threads ("terminate
    called without an active exception", 1 run in 3 under torchrun here) after all its work
    is done, and NCCL warns. A failed command cannot take the barrier of leaving (another rank
    may be elsewhere, or gone), so a rank of a group ends at once, after its report is out.
    """
    code = main(argv)
    dist = sys.modules.get("torch.distributed")  # only model commands imported torch
    if dist is None:
        return code
    if code == 0:
        from salmon_wf.model.parallel import leave_process_group

        leave_process_group()
    elif dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)  # no static destructors: gloo's live threads cannot abort the exit
    return code


def program() -> None:
    """The `salmon-wf` executable."""
    sys.exit(run_and_leave())


if __name__ == "__main__":
    program()
