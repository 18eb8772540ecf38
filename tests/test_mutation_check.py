"""scripts/mutation_check.py stays runnable: every mutation's snippet is still in its file once,
and every test file it runs exists (the check itself takes ~20 minutes and is not run here)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location(
        "mutation_check", ROOT / "scripts/mutation_check.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_every_mutation_applies_and_names_existing_tests():
    script = load_script()
    assert sorted(m.number for m in script.MUTATIONS) == list(range(1, 15))
    assert script.check_snippets(list(script.MUTATIONS)) == []
    for mutation in script.MUTATIONS:
        files = [argument for argument in mutation.tests if argument.endswith(".py")]
        assert files and all((ROOT / name).is_file() for name in files), mutation
