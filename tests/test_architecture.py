"""The reader's walk stays short (issue 22): `FCDMDiffAE.decode` and `DinacAE.encode` each run
code from at most 6 project files, and every model's own class chain is at most 4 deep.
Counted by scripts/reader_walk.py, which prints the walk of every family."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest

from diffae_core.families import installed_families

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = installed_families()
MAX_FILES = 6
MAX_CHAIN = 4


def load_script():
    spec = importlib.util.spec_from_file_location("reader_walk", ROOT / "scripts/reader_walk.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


WALK = load_script()


@pytest.mark.parametrize(("family", "method"), [("fcdm_diffae", "decode"), ("dinac_ae", "encode")])
def test_a_call_enters_at_most_six_files(family: str, method: str) -> None:
    files = WALK.walks(FAMILIES[family])[method]
    assert len(files) <= MAX_FILES, files


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_walk_is_counted_and_short(family: str) -> None:
    # Every family's encode and decode stay within a small budget too (m_diffae keeps its own
    # DiCo blocks and open points apart, hence one or two files more than the FCDM families).
    for method, files in WALK.walks(FAMILIES[family]).items():
        assert 3 <= len(files) <= MAX_FILES + 2, (method, files)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_class_chain_is_at_most_four_deep(family: str) -> None:
    chain = WALK.class_chain(FAMILIES[family].model_class)
    assert len(chain) <= MAX_CHAIN, chain


def test_the_core_imports_itself_only_relatively() -> None:
    # What lets `diffae bundle` copy the core into a model folder without rewriting it.
    core = ROOT / "shared/diffae_core/src/diffae_core"
    absolute = []
    for path in sorted(core.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            absolute += [
                f"{path.name}:{node.lineno}" for n in names if n.split(".")[0] == "diffae_core"
            ]
    assert absolute == []
