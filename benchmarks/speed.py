"""Encode throughput and decode latency of the installed families against the FLUX.2 VAE.

Every preset of every family chosen is built full size with PyTorch's default initialisation
(weights' values do not change the work done) next to diffusers' `AutoencoderKLFlux2()` with
its default config and BFL's FLUX.2 small decoder (`decoder_block_out_channels`, decode only),
and all are timed side by side in this one process on the same inputs:
encode of a batch of random images in [-1, 1], and batch-1 decode of random latents with one
sampling step and PDG off. Each case is warmed up, then the repeats are interleaved across the
models (round-robin) so that load from elsewhere on a shared machine hits all of them alike;
the median is reported. FLOPs are counted during an eager warm-up call and set against the
fastest GEMM measured here (a large matrix product: a yardstick, not the machine's peak).

    uv run python -m benchmarks.speed --resolutions 256 512 --dtypes fp32 bf16 --repeats 3

writes benchmarks/results/speed-<machine>.md and .json. A family that fails to build or run
stops the run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .flops import count_flops, gemm_peak_flops
from .flux2 import FLUX2_NAME
from .memory import peak_growth_bytes, tensor_bytes
from .models import Candidate, family_calls, family_candidate, flux2_candidate, select_families
from .report import RESULTS_DIR, default_machine_name, machine_info, write_results
from .speed_tables import render_speed_page
from .timing import median_ms, time_call

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
TASKS = ("encode", "decode")
MODES = ("eager", "compile")
TILED = "tiled"
"""The mode of the tiled-decode rows: eager, `model.enable_tiling(tile_tokens)`."""
GPU_ENCODE_BATCH = {256: 128, 512: 32, 1024: 8, 2048: 2}
"""The cards' encode batches at 256 and 512 (dinac_ae_d2, full_capacitor), scaled beyond."""
CPU_ENCODE_BATCH = 1
DECODE_BATCH = 1
MIB = 2**20


@dataclass(frozen=True)
class Case:
    """One timed configuration: which call, on what size, in what dtype and mode."""

    task: str
    resolution: int
    batch: int
    dtype: str
    mode: str


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.speed", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--families", nargs="+", help="installed family names (default: all)")
    parser.add_argument("--presets", nargs="+", help="preset names to keep (default: all)")
    parser.add_argument("--resolutions", nargs="+", type=int, default=[256, 512, 1024])
    parser.add_argument(
        "--decode-only-resolutions",
        nargs="+",
        type=int,
        default=[],
        help="extra resolutions timed for decode only (e.g. 2048 on a GPU)",
    )
    parser.add_argument(
        "--tiled-resolutions",
        nargs="+",
        type=int,
        default=[],
        help="resolutions decoded with model.enable_tiling() (families only, no FLUX.2)",
    )
    parser.add_argument(
        "--tile-tokens",
        type=int,
        default=None,
        help="enable_tiling(tile_tokens) (default: its own)",
    )
    parser.add_argument("--dtypes", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16"])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=["eager", "compile"])
    parser.add_argument(
        "--compile-mode",
        help='torch.compile mode of the compiled rows, e.g. "max-autotune" (CUDA graphs on CUDA)',
    )
    parser.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per case")
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="untimed calls before timing (at least 1: the first counts FLOPs); then one more "
        "measures peak memory, after a plain warm-up call",
    )
    parser.add_argument(
        "--encode-batch",
        nargs="+",
        type=int,
        help=f"encode batches timed at every resolution (default: GPU {GPU_ENCODE_BATCH}, CPU "
        f"{CPU_ENCODE_BATCH})",
    )
    parser.add_argument("--no-flux2", action="store_true", help="skip the FLUX.2 VAE")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="each family's tiny test config and a tiny FLUX.2 VAE instead of the presets "
        "(a smoke run: its figures mean nothing)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (CPU)")
    parser.add_argument("--gemm-size", type=int, help="matmul side (default 8192 GPU, 2048 CPU)")
    parser.add_argument("--machine", help="name in the results file names (default: device)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    for name in ("repeats", "warmup"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected a positive count, got {getattr(args, name)}")
    return args


def build_candidates(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype
) -> list[Candidate]:
    """Every chosen preset of every chosen family, then the FLUX.2 VAE and (full size only) its
    small decoder, in `dtype`."""
    candidates = []
    for family_name, family in select_families(args.families).items():
        for preset in ["tiny"] if args.tiny else family.presets():
            if args.presets is not None and preset not in args.presets:
                continue
            config = family.tiny_config if args.tiny else family.config_class.preset(preset)
            name = f"{family_name}/{preset}"
            try:
                candidate = family_candidate(family, config, name, device=device, dtype=dtype)
            except Exception as error:
                raise RuntimeError(f"{name}: building the model failed: {error}") from error
            candidates.append(candidate)
    if not candidates:
        raise SystemExit("--presets: no preset of the chosen families matches")
    if not args.no_flux2:
        candidates.append(flux2_candidate(device=device, dtype=dtype, tiny=args.tiny))
        if not args.tiny:
            small = flux2_candidate(device=device, dtype=dtype, small_decoder=True)
            candidates.append(small)
    return candidates


def case_input(
    candidate: Candidate, case: Case, device: torch.device, dtype: torch.dtype
) -> Callable[[], Any]:
    """The call timed for one case: encode of random images or decode of random latents."""
    generator = torch.Generator().manual_seed(0)
    side = case.resolution
    if case.task == "encode":
        assert candidate.encode is not None
        images = torch.rand(case.batch, 3, side, side, generator=generator) * 2 - 1
        images = images.to(device=device, dtype=dtype)
        return lambda: candidate.encode(images)
    assert candidate.decode is not None
    shape = candidate.latent_shape(case.batch, side, side)
    latents = torch.randn(shape, generator=generator).to(device=device, dtype=dtype)
    return lambda: candidate.decode(latents, side, side)


def runs(candidate: Candidate, case: Case) -> bool:
    """Whether the candidate has the case's call (capacitor_decoder has no encoder)."""
    return getattr(candidate, case.task) is not None


def compiled(
    candidate: Candidate,
    task: str,
    cache: dict[tuple[str, str], Callable],
    options: dict[str, Any] | None = None,
) -> Candidate:
    """The candidate with its `task` call wrapped by torch.compile once (kept in `cache`).

    A family model is compiled by its own recipe (`model.compile_for_inference()`: inductor
    freezing, channels_last on a CPU); the FLUX.2 VAE by a plain `torch.compile`.
    """
    key = (candidate.name, task)
    if key not in cache:
        if is_family_model(candidate.module):
            handle = candidate.module.compile_for_inference(**(options or {}))
            cache[key] = family_calls(handle)[task]
        else:
            cache[key] = torch.compile(getattr(candidate, task), **(options or {}))
    return Candidate(**{**candidate.__dict__, task: cache[key]})


def is_family_model(module: Any) -> bool:
    """Whether `module` is one of the families' models (not the FLUX.2 VAE)."""
    return hasattr(module, "compile_for_inference")


@contextmanager
def prepared(
    candidates: list[Candidate],
    case: Case,
    tile_tokens: int | None,
) -> Iterator[None]:
    """Put the family models in the case's mode (tiled) and back afterwards (also the weights'
    memory format, which the compile recipe switches to channels_last on a CPU)."""
    families = [c.module for c in candidates if is_family_model(c.module)]
    try:
        for model in families:
            if case.mode == TILED:
                model.enable_tiling(*(() if tile_tokens is None else (tile_tokens,)))
        yield
    finally:
        for model in families:
            model.to(memory_format=torch.contiguous_format)  # the compile recipe's weights
            model.disable_tiling()


def compile_options(args: argparse.Namespace) -> dict[str, Any]:
    """The torch.compile options of the compiled rows (`--compile-mode`)."""
    mode = getattr(args, "compile_mode", None)
    return {} if mode is None else {"mode": mode}


def warm_up(
    candidate: Candidate,
    case: Case,
    args: argparse.Namespace,
    device: torch.device,
    flop_counts: dict[tuple[str, Case], int],
    compile_cache: dict[tuple[str, str], Callable],
) -> tuple[Callable[[], Any], dict[str, Any]]:
    """The call to time for one model and its row: FLOPs, first-call time and peak memory."""
    dtype = DTYPES[case.dtype]
    flop_key = (candidate.name, Case(case.task, case.resolution, case.batch, "", ""))
    options = compile_options(args)
    timed = candidate
    if case.mode == "compile":
        timed = compiled(candidate, case.task, compile_cache, options)
    call = case_input(timed, case, device, dtype)
    first_call_s, plain_calls = None, 0
    with torch.inference_mode():
        for index in range(args.warmup):
            # The first call counts FLOPs (eager; the counter's hooks change what it allocates
            # and how fast it runs) and compiles (compile mode).
            counting = index == 0 and flop_key not in flop_counts
            with count_flops() if counting else nullcontext() as flops:
                seconds = time_call(call, device)
            if counting:
                flop_counts[flop_key] = flops.total
            plain_calls += not counting
            first_call_s = seconds if index == 0 else first_call_s
        if not plain_calls:
            time_call(call, device)  # memory is measured after a plain call, never the first
        growth = peak_growth_bytes(call, device)
    weights = tensor_bytes(candidate.module)
    weight_dtype = next(candidate.module.parameters()).dtype
    row = {
        **case.__dict__,
        # What the weights are in after the cast: a family upcasts bf16 to float32 on a CPU
        # without native bf16 (diffae_core.runtime).
        "compute_dtype": DTYPE_NAMES.get(weight_dtype, str(weight_dtype)),
        "model": candidate.name,
        "parameters": candidate.parameters(),
        "flops": flop_counts[flop_key],
        "first_call_s": first_call_s,
        "weights_mib": weights / MIB,
        "peak_growth_mib": None if growth is None else growth / MIB,
        "peak_mib": None if growth is None else (weights + growth) / MIB,
        "seconds": [],
    }
    return call, row


def measure_case(
    candidates: list[Candidate],
    case: Case,
    args: argparse.Namespace,
    device: torch.device,
    flop_counts: dict[tuple[str, Case], int],
    compile_cache: dict[tuple[str, str], Callable],
) -> list[dict[str, Any]]:
    """Warm up each model, measure its peak memory and FLOPs, then time the models round-robin."""
    chosen = [c for c in candidates if runs(c, case)]
    if case.mode == TILED or case.resolution in args.decode_only_resolutions:
        chosen = [c for c in chosen if c.name != FLUX2_NAME]  # minutes per call on a CPU
    for candidate in chosen:
        flop_key = (candidate.name, Case(case.task, case.resolution, case.batch, "", ""))
        if case.mode != "eager" and flop_key not in flop_counts:
            # Count on one untimed eager, untiled call: the counter does not see inside a
            # compiled graph, and tiling's recomputation is overhead, not work.
            with torch.inference_mode(), count_flops() as flops:
                case_input(candidate, case, device, DTYPES[case.dtype])()
            flop_counts[flop_key] = flops.total
    calls, rows = [], []
    with prepared(chosen, case, args.tile_tokens):
        for candidate in chosen:
            try:
                call, row = warm_up(candidate, case, args, device, flop_counts, compile_cache)
            except Exception as error:  # a failing case stops the run, naming the model
                raise RuntimeError(f"{candidate.name}, {case}: {error}") from error
            calls.append(call)
            rows.append(row)
        with torch.inference_mode():
            for _ in range(args.repeats):
                for call, row in zip(calls, rows, strict=True):
                    row["seconds"].append(time_call(call, device))
    for row in rows:
        row["ms_batch"] = median_ms(row["seconds"])
        row["ms_image"] = row["ms_batch"] / case.batch
        row["images_per_s"] = 1000.0 / row["ms_image"]
        row["tflops"] = row["flops"] / (row["ms_batch"] / 1000.0) / 1e12
    return rows


def add_flux2_ratios(rows: list[dict[str, Any]], gemm_flops: dict[str, float]) -> None:
    """Speedup and peak-memory reduction against the FLUX.2 row of the same case; GEMM share."""
    case_fields = ("task", "resolution", "batch", "dtype", "mode")
    references = {tuple(r[f] for f in case_fields): r for r in rows if r["model"] == FLUX2_NAME}
    for row in rows:
        peak = gemm_flops.get(row.get("compute_dtype", row["dtype"]), gemm_flops[row["dtype"]])
        row["gemm_fraction"] = row["tflops"] * 1e12 / peak
        reference = references.get(tuple(row[f] for f in case_fields))
        row["speedup_vs_flux2"] = (
            None if reference is None else reference["ms_image"] / row["ms_image"]
        )
        has_memory = reference is not None and row["peak_mib"] and reference["peak_mib"]
        row["peak_reduction_vs_flux2"] = (
            1.0 - row["peak_mib"] / reference["peak_mib"] if has_memory else None
        )
        row["flux2_ms_image"] = None if reference is None else reference["ms_image"]
        row["flux2_peak_mib"] = None if reference is None else reference["peak_mib"]


def add_mode_ratios(rows: list[dict[str, Any]]) -> None:
    """Time and peak memory of compiled / tiled rows over the eager row of the same case."""
    case_fields = ("model", "task", "resolution", "batch", "dtype")
    eager = {tuple(r[f] for f in case_fields): r for r in rows if r["mode"] == "eager"}
    for row in rows:
        reference = (
            None if row["mode"] == "eager" else eager.get(tuple(row[f] for f in case_fields))
        )
        row["time_vs_eager"] = (
            None if reference is None else row["ms_batch"] / reference["ms_batch"]
        )
        has_memory = (
            reference is not None and row["peak_growth_mib"] and reference["peak_growth_mib"]
        )
        row["peak_growth_vs_eager"] = (
            row["peak_growth_mib"] / reference["peak_growth_mib"] if has_memory else None
        )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the Markdown, write the results files; returns the JSON data."""
    args = parse_args(argv)
    select_families(args.families)  # an unknown name stops the run before anything is measured
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    encode_batches = {
        side: args.encode_batch
        or [GPU_ENCODE_BATCH.get(side, 1) if device.type == "cuda" else CPU_ENCODE_BATCH]
        for side in args.resolutions
    }
    gemm_size = args.gemm_size or (8192 if device.type == "cuda" else 2048)
    gemm_flops = {name: gemm_peak_flops(device, DTYPES[name], gemm_size) for name in args.dtypes}
    machine = args.machine or default_machine_name(device)
    info = machine_info(device)
    settings = {
        "repeats (median of)": args.repeats,
        "warm-up calls": args.warmup,
        "encode batches by resolution": encode_batches,
        "decode": f"batch {DECODE_BATCH}, 1 step, PDG off, random latents",
        "weights": "random (PyTorch default init); FLUX.2 VAE = AutoencoderKLFlux2() defaults",
        "configs": "tiny test configs (smoke run)" if args.tiny else "published presets, full size",
        "gemm_size": gemm_size,
        "gemm_tflops": {name: flops / 1e12 for name, flops in gemm_flops.items()},
    }
    cases = (
        [
            Case(task, side, batch, dtype, mode)
            for side in args.resolutions
            for task in args.tasks
            for batch in (encode_batches[side] if task == "encode" else [DECODE_BATCH])
            for dtype in args.dtypes
            for mode in args.modes
        ]
        + [
            Case("decode", side, DECODE_BATCH, dtype, mode)
            for side in args.decode_only_resolutions
            for dtype in args.dtypes
            for mode in args.modes
            if "decode" in args.tasks
        ]
        + [
            Case("decode", side, DECODE_BATCH, dtype, TILED)
            for side in args.tiled_resolutions
            for dtype in args.dtypes
            if "decode" in args.tasks
        ]
    )
    rows: list[dict[str, Any]] = []
    flop_counts: dict[tuple[str, Case], int] = {}
    for dtype in args.dtypes:
        candidates = build_candidates(args, device, DTYPES[dtype])
        compile_cache: dict[tuple[str, str], Callable] = {}
        for case in (c for c in cases if c.dtype == dtype):
            print(f"timing {case}", flush=True)
            rows += measure_case(candidates, case, args, device, flop_counts, compile_cache)
        del candidates, compile_cache
    add_flux2_ratios(rows, gemm_flops)
    add_mode_ratios(rows)
    markdown = render_speed_page(machine, info, settings, rows)
    data = {"machine": machine, "info": info, "settings": settings, "results": rows}
    print(markdown)
    write_results(args.out_dir, f"speed-{machine}", markdown, data)
    return data


if __name__ == "__main__":
    main()
