"""The command line as a package: one module per verb, the only place that parses arguments; `taskprompter` alone
lists the verbs, --version, `models`, and a closed pipe that ends quietly."""

from __future__ import annotations

import argparse
import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import taskprompter
from taskprompter.cli import VERBS, main
from taskprompter.model.build import PRESETS
from taskprompter.model.profile import count_parameters

SRC = Path(taskprompter.__file__).resolve().parent


def test_no_verb_lists_every_verb(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for verb, (_, help_text) in VERBS.items():
        assert f"  {verb}" in out and help_text in out, verb


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip().startswith(f"taskprompter {taskprompter.__version__}")


@pytest.mark.parametrize("verb", list(VERBS))
def test_every_verb_is_one_module_of_the_cli_package(verb):
    module = importlib.import_module(f"taskprompter.cli.{VERBS[verb][0]}")
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert callable(module.run)
    assert Path(module.__file__).parent == SRC / "cli"


def test_only_the_cli_parses_arguments():
    """No module outside cli/ imports argparse or defines a verb's add_arguments/run."""
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.parent.name == "cli":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if "argparse" in names:
                offenders.append(f"{path.relative_to(SRC)} imports argparse")
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        if {"add_arguments", "run"} <= defined:
            offenders.append(f"{path.relative_to(SRC)} defines a verb")
    assert offenders == []


def test_models_lists_every_preset_with_tasks_size_and_parameters(capsys):
    assert main(["models"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line for line in lines[1:]}
    assert sorted(rows) == sorted(PRESETS)
    tiny = rows["taskprompter_tiny"]
    assert "64x64" in tiny and "semseg 21" in tiny and "edge 1" in tiny
    assert f"{count_parameters('taskprompter_tiny') / 1e6:.1f}M" in tiny
    assert "448x576" in rows["taskprompter_vit_l_nyud"] and "depth 1" in rows["taskprompter_vit_l_nyud"]


def test_count_parameters_matches_a_built_model():
    model = taskprompter.build_model("taskprompter_tiny")
    assert count_parameters("taskprompter_tiny") == sum(p.numel() for p in model.parameters())


def test_a_closed_pipe_ends_quietly():
    """`taskprompter models | head -1`: the reader leaves after one line; no traceback, no error message."""
    proc = subprocess.Popen([sys.executable, "-m", "taskprompter", "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -1` does after its line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0
    assert first.startswith(b"preset")
    assert err == "", err
