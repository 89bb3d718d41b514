"""The command line, `taskprompter <verb>` (also `python -m taskprompter`): the only place that parses arguments or
prints for a terminal.

Each verb is one module of this package exposing ``add_arguments(parser)`` and ``run(args) -> int``; the library
functions it calls take plain arguments and return values. A verb's module is imported only when that verb runs, so
`taskprompter --help` is instant. User mistakes (missing file, bad config, wrong checkpoint) raise
``TaskPrompterError``, and the file system's refusals (a full disk, no permission, a read-only file system) raise
``OSError``: both are printed as one line that says what to do, with exit code 2 (``--debug`` or
``TASKPROMPTER_DEBUG=1`` shows the traceback instead); anything else is a bug and keeps its traceback. Ctrl-C exits
with 130 (a training run first writes its checkpoint and names the command that resumes). Output cut short by a
closed pipe (``taskprompter profile ... | head``) ends quietly.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..errors import TaskPrompterError, one_line, os_error_message

DEBUG_ENV = "TASKPROMPTER_DEBUG"  # set to 1: errors keep their traceback, like --debug

# verb -> (module in this package, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "synth": ("synth", "write a synthetic multi-task dataset in a released format"),
    "check-data": ("check_data", "read every sample of a dataset and report all problems"),
    "labelled-tasks": ("labelled_tasks", "import or show which tasks each image is labelled for (partial labels)"),
    "train": ("train", "train a model from a config (torchrun for several processes)"),
    "eval": ("eval", "evaluate a checkpoint on a split with every metric"),
    "eval-3d": ("eval_3d", "Cityscapes-3D detection score (mDS) of prediction JSONs, printed as JSON"),
    "predict": ("predict", "predict on your own images of any size"),
    "models": ("models", "list the model presets with their tasks, input size and parameters"),
    "profile": ("profile", "parameters and multiply-accumulates per component"),
    "convert": ("convert", "convert a released checkpoint to a model directory (safetensors + config)"),
    "export": ("export", "export a model to ONNX"),
    "bench": ("bench", "benchmark the efficient path against the naive reference path"),
    "demo": ("demo", "generate synthetic scenes, train, evaluate, and write a report"),
}


def _verb_module(verb: str):
    return importlib.import_module(f"{__name__}.{VERBS[verb][0]}")


def verbs_text() -> str:
    width = max(map(len, VERBS))
    return "verbs:\n" + "\n".join(f"  {verb:{width}s}  {help_text}" for verb, (_, help_text) in VERBS.items())


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskprompter",
        description="TaskPrompter: multi-task dense scene understanding (semseg, depth, normals, boundaries, "
        "human parts, saliency) from one ViT with task prompts.",
        epilog="`taskprompter VERB --help` describes a verb.",
    )
    parser.add_argument("--version", action="version", version=version_text())
    debug_help = f"show the traceback of an error instead of one line (also {DEBUG_ENV}=1)"
    parser.add_argument("--debug", action="store_true", help=debug_help)
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    wanted = next((a for a in argv or [] if not a.startswith("-")), None)
    for verb, (_, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=debug_help)
        if verb == wanted:  # only the chosen verb's module is imported
            _verb_module(verb).add_arguments(p)
    return parser


def version_text() -> str:
    return f"taskprompter {__version__} (Python {sys.version.split()[0]})"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print(f"usage: taskprompter VERB [options]   (taskprompter VERB --help for one verb)\n\n{verbs_text()}")
        return 0
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        code = int(_verb_module(args.verb).run(args) or 0)
        sys.stdout.flush()  # here, so that a closed pipe is caught below rather than at exit
        return code
    except BrokenPipeError:  # the reader went away (`... | head`): stop quietly, and let the exit flush nothing
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (TaskPrompterError, OSError) as err:
        if debug:
            raise
        text = one_line(str(err)) if isinstance(err, TaskPrompterError) else os_error_message(err)
        print(f"taskprompter {args.verb}: error: {text}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if debug:
            raise
        print(f"taskprompter {args.verb}: interrupted{': ' + one_line(str(err)) if str(err) else ''}",
              file=sys.stderr)
        return 130
