"""One entry point, `taskprompter <verb>` (also `python -m taskprompter`).

Each verb lives in the module that does the work; that module exposes ``add_arguments(parser)`` and
``run(args) -> int``. Modules are imported only when their verb runs, so `--help` is instant.
User mistakes (missing file, bad config, wrong checkpoint) raise ``TaskPrompterError`` and are printed as
one line; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import TaskPrompterError

# verb -> (module, one-line help)
VERBS: dict[str, tuple[str, str]] = {
    "synth": ("taskprompter.data.synthetic_cli", "write a synthetic multi-task dataset in a released format"),
    "check-data": ("taskprompter.data.check", "read every sample of a dataset and report all problems"),
    "train": ("taskprompter.engine.train", "train a model from a config (torchrun for several processes)"),
    "eval": ("taskprompter.engine.evaluate", "evaluate a checkpoint on a split with every metric"),
    "predict": ("taskprompter.inference", "predict on your own images of any size"),
    "profile": ("taskprompter.model.profile", "parameters and multiply-accumulates per component"),
    "convert": ("taskprompter.model.checkpoints", "convert a released checkpoint to safetensors + config"),
    "export": ("taskprompter.export", "export a checkpoint to ONNX"),
    "bench": ("taskprompter.bench", "benchmark the efficient path against the naive reference path"),
    "demo": ("taskprompter.demo", "generate synthetic scenes, train, evaluate, and write a report"),
}


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="taskprompter",
        description="TaskPrompter: multi-task dense scene understanding (semseg, depth, normals, boundaries, "
        "human parts, saliency) from one ViT with task prompts.",
    )
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    wanted = None
    if argv:
        wanted = next((a for a in argv if not a.startswith("-")), None)
    for verb, (module, help_text) in VERBS.items():
        p = sub.add_parser(verb, help=help_text, description=help_text)
        if verb == wanted:  # only the chosen verb's module is imported
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    module = importlib.import_module(VERBS[args.verb][0])
    try:
        return int(module.run(args) or 0)
    except TaskPrompterError as err:
        print(f"taskprompter {args.verb}: error: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"taskprompter {args.verb}: error: file not found: {err.filename or err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"taskprompter {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
