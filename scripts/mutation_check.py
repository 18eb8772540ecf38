"""Mutation check: does the suite catch a wrong model? (issue 28's table of one-line changes)

Applies each mutation below, one at a time, to a temporary copy of the working tree (tracked
and untracked files, not .venv or caches), runs the tests that should catch it there, and prints
a table: caught (those tests fail), NOT CAUGHT (they pass), error (collection/usage error: the
check proves nothing) or timeout. Exits 0 only when every mutation is caught; 2 when a
mutation's snippet is no longer in its file (code moved: update the table below).

    uv run python scripts/mutation_check.py              # all of them, ~10 min on 2 cores
    uv run python scripts/mutation_check.py --only 7,8   # some
    uv run python scripts/mutation_check.py --list       # the table, nothing run

The copy gets its own environment (`uv sync --frozen`, ~15 s with a warm cache) so that the
mutated sources, not this checkout's editable installs, are imported. First the selected tests
run unmutated: a baseline failure stops the check (a mutation "caught" by a broken test means
nothing).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAINING = "packages/diffae/src/diffae/training.py"
SAMPLERS = "shared/diffae_core/src/diffae_core/diffusion.py"
GOLDEN_TESTS = (
    "packages/fcdm_diffae/tests/test_fcdm_diffae_golden.py",
    "packages/m_diffae/tests/test_m_diffae_golden.py",
    "packages/dinac_ae/tests/test_dinac_ae_reference_values.py",
)


@dataclass(frozen=True)
class Mutation:
    """One line of the product changed: `original` (exactly once in `file`) -> `replacement`."""

    number: int
    summary: str
    file: str
    original: str
    replacement: str
    tests: tuple[str, ...]
    """pytest arguments: the test files (or node ids) that must fail, and any -k."""


MUTATIONS = (
    Mutation(
        1,
        "training objective: MSE against -x0",
        TRAINING,
        "mse = F.mse_loss(x0_hat.float(), images.float())",
        "mse = F.mse_loss(x0_hat.float(), -images.float())",
        ("tests/test_training_objective.py",),
    ),
    Mutation(
        2,
        "training: no forward diffusion (x_t = x0)",
        TRAINING,
        'x_t = diffuse(images, batch["pixel_noise"], logsnr)',
        "x_t = images",
        ("tests/test_training_objective.py",),
    ),
    Mutation(
        3,
        "training: gradient ascent",
        TRAINING,
        "        loss.backward()",
        "        (-loss).backward()",
        ("tests/test_training_objective.py",),
    ),
    Mutation(
        4,
        "EMA: decay 1 - d instead of d",
        TRAINING,
        "return min(decay, (1.0 + updates) / (10.0 + updates))",
        "return 1.0 - min(decay, (1.0 + updates) / (10.0 + updates))",
        ("tests/test_training_objective.py",),
    ),
    Mutation(
        5,
        "whitening statistics: variance as E[z^2]",
        TRAINING,
        "variance = (moments[1] - moments[0].square()).clamp_min(0.0)",
        "variance = moments[1].clamp_min(0.0)",
        ("tests/test_training_objective.py",),
    ),
    Mutation(
        6,
        "latent KL without alpha^2",
        TRAINING,
        "0.5 * (alpha.square() * mean.square() + sigma.square()",
        "0.5 * (mean.square() + sigma.square()",
        ("tests/test_training_objective.py",),
    ),
    Mutation(
        7,
        "multi-step DDIM: keep = sigma[i+1] / sigma[0]",
        SAMPLERS,
        "keep = sigmas[i + 1] / sigmas[i]",
        "keep = sigmas[i + 1] / sigmas[0]",
        ("shared/diffae_core/tests/test_multistep_ddim.py", *GOLDEN_TESTS),
    ),
    Mutation(
        8,
        "multi-step DDIM: x0 predicted at t[0] on every step",
        SAMPLERS,
        "x0_hat = denoise(x, times[i].expand(x.shape[0]))\n        keep",
        "x0_hat = denoise(x, times[0].expand(x.shape[0]))\n        keep",
        ("shared/diffae_core/tests/test_multistep_ddim.py", *GOLDEN_TESTS),
    ),
    Mutation(
        9,
        "encode-dataset resume re-encodes every finished shard",
        "packages/diffae/src/diffae/dataset_encoding.py",
        "        if record is not None:\n            records[index] = record",
        "        if record is not None and False:\n            records[index] = record",
        ("tests/test_encode_dataset.py", "-k", "resume"),
    ),
    Mutation(
        10,
        "FLUX.2 adapter: height and width swapped",
        "packages/capacitor_decoder/src/capacitor_decoder/diffusers_vae.py",
        "height, width = 8 * z.shape[-2], 8 * z.shape[-1]",
        "width, height = 8 * z.shape[-2], 8 * z.shape[-1]",
        ("tests/test_diffusers_interop.py", "-k", "adapter_keeps"),
    ),
    Mutation(
        11,
        "AutoencoderDiffae.decode: height and width swapped",
        "packages/diffae/src/diffae/diffusers_vae.py",
        "height, width = patch * int(z.shape[-2]), patch * int(z.shape[-1])",
        "width, height = patch * int(z.shape[-2]), patch * int(z.shape[-1])",
        ("tests/test_diffusers_interop.py", "-k", "wrapper_equals"),
    ),
    Mutation(
        12,
        "loader: no header-vs-model check before reading weights",
        "shared/diffae_core/src/diffae_core/loading.py",
        "        if not diff.loadable:\n            raise CheckpointMismatchError(",
        "        if False:\n            raise CheckpointMismatchError(",
        ("tests/test_loader_trust.py", "-k", "before_any_weight"),
    ),
    Mutation(
        13,
        "bicubic baseline: each side / ratio instead of / sqrt(ratio)",
        "packages/diffae/src/diffae/metrics.py",
        "scale = math.sqrt(ratio)",
        "scale = ratio",
        ("tests/test_bicubic_baseline.py",),
    ),
    Mutation(
        14,
        "diffae encode writes latents x 1.01",
        "packages/diffae/src/diffae/cli/coding.py",
        "latents = run_model(loaded.model, images, loaded.model.encode, names)",
        "latents = run_model(loaded.model, images, loaded.model.encode, names) * 1.01",
        ("tests/test_cli_families.py", "-k", "round_trip"),
    ),
)


def copy_working_tree(target: Path) -> None:
    """Tracked and untracked (not ignored) files of this checkout -> `target`."""
    listing = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def check_snippets(mutations: list[Mutation]) -> list[str]:
    """A line per mutation whose `original` is not exactly once in its file."""
    problems = []
    for mutation in mutations:
        path = ROOT / mutation.file
        count = path.read_text(encoding="utf-8").count(mutation.original) if path.is_file() else 0
        if count != 1:
            problems.append(
                f"mutation {mutation.number}: the snippet {mutation.original!r} occurs {count} "
                f"times in {mutation.file} (expected once): the code moved; update MUTATIONS in "
                f"{Path(__file__).relative_to(ROOT)}"
            )
    return problems


def run_tests(copy: Path, arguments: tuple[str, ...], timeout: float) -> tuple[str, float]:
    """pytest in the copy: ('pass' | 'fail' | 'error' | 'timeout', seconds)."""
    command = ["uv", "run", "--frozen", "pytest", "-q", "-x", "-p", "no:cacheprovider"]
    environment = os.environ | {"PYTHONDONTWRITEBYTECODE": "1"}
    environment.pop("VIRTUAL_ENV", None)  # the copy's own .venv
    start = time.perf_counter()
    try:
        result = subprocess.run(
            [*command, *arguments],
            cwd=copy,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=environment,
        )
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - start
    seconds = time.perf_counter() - start
    # pytest: 0 all passed, 1 some failed; anything else (interrupted, usage, no tests) is no
    # evidence either way.
    outcome = {0: "pass", 1: "fail"}.get(result.returncode, "error")
    if outcome == "error":
        print(result.stdout[-2000:], result.stderr[-2000:], sep="\n", file=sys.stderr)
    return outcome, seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", help="comma-separated mutation numbers (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per test run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    args = parser.parse_args(argv)
    mutations = list(MUTATIONS)
    if args.only:
        wanted = {int(number) for number in args.only.split(",")}
        unknown = wanted - {m.number for m in mutations}
        if unknown:
            parser.error(f"--only: no mutation numbered {sorted(unknown)}")
        mutations = [m for m in mutations if m.number in wanted]
    if args.list:
        for m in mutations:
            print(f"{m.number:>2}  {m.summary}  ({m.file}; {' '.join(m.tests)})")
        return 0
    problems = check_snippets(mutations)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 2

    copy = Path(tempfile.mkdtemp(prefix="diffae-mutation-"))
    try:
        copy_working_tree(copy)
        print(f"copy of {ROOT} in {copy}; uv sync --frozen ...", flush=True)
        subprocess.run(
            ["uv", "sync", "--frozen", "--quiet"],
            cwd=copy,
            check=True,
            env=os.environ | {"UV_PYTHON_DOWNLOADS": "never"},
        )
        for tests in dict.fromkeys(m.tests for m in mutations):  # each selection once
            outcome, seconds = run_tests(copy, tests, args.timeout)
            print(f"baseline {outcome:<7} {seconds:5.0f} s  {' '.join(tests)}", flush=True)
            if outcome != "pass":
                print("the unmutated tests must pass: fix the suite first", file=sys.stderr)
                return 1
        print(flush=True)
        rows = []
        for m in mutations:
            path = copy / m.file
            original = path.read_text(encoding="utf-8")
            path.write_text(original.replace(m.original, m.replacement), encoding="utf-8")
            try:
                outcome, seconds = run_tests(copy, m.tests, args.timeout)
            finally:
                path.write_text(original, encoding="utf-8")
            verdict = {"fail": "caught", "pass": "NOT CAUGHT"}.get(outcome, outcome)
            rows.append((m, verdict, seconds))
            print(f"{m.number:>2} {verdict:<10} {seconds:5.0f} s  {m.summary}", flush=True)
    finally:
        if args.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)

    print("\n| # | mutation | where | tests run | result | s |\n|---|---|---|---|---|---:|")
    for m, verdict, seconds in rows:
        where, tests = m.file.rsplit("/src/", 1)[-1], " ".join(m.tests)
        print(f"| {m.number} | {m.summary} | `{where}` | `{tests}` | {verdict} | {seconds:.0f} |")
    survivors = [m.number for m, verdict, _ in rows if verdict != "caught"]
    caught = len(rows) - len(survivors)
    print(f"\n{caught} of {len(rows)} caught" + (f"; not caught: {survivors}" if survivors else ""))
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main())
