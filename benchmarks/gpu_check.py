"""Everything the cards measured, proven on this machine's GPU in one run (`gpu_check.sh`).

1. The environment: GPU, driver, torch, CUDA and cuDNN versions (CPU and load on a CPU).
2. The device tests (`tests/test_devices.py`) on the device.
3. The cards' tables for every published preset, side by side with the FLUX.2 VAE and the
   FLUX.2 small decoder (random weights, the protocol of `speed.py`: warm-up calls, then
   repeats interleaved across the models, synchronised timing, median; peak memory via
   `torch.cuda.max_memory_allocated`), our figures printed next to the cards'.
4. The compiled path (`model.compile_for_inference(mode="max-autotune")` on CUDA: CUDA
   graphs), its output checked against eager and timed against it.
5. What the input value checks cost (one min/max read-back, one host sync per call).

Everything is written to `results/gpu-check-<machine>.md` and `.json`; the exit status is 1 if
any check failed. `--device cpu` runs a short version (one preset per family, small sizes,
float32) that exercises the same code in about a minute on 2 cores, as CI does.

    bash benchmarks/gpu_check.sh               # CUDA (not yet run on a GPU)
    bash benchmarks/gpu_check.sh --device cpu  # the short version
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.benchmark import Timer

from diffae_core.runtime import check_values, value_checks

from . import speed
from .flops import gemm_peak_flops
from .flux2 import FLUX2_NAME, FLUX2_SMALL_DECODER_NAME
from .models import Candidate, family_candidate, flux2_candidate, select_families
from .report import RESULTS_DIR, default_machine_name, machine_info, markdown_table, write_results
from .speed_tables import render_speed_page
from .timing import median_ms, time_call

REPOSITORY = Path(__file__).resolve().parent.parent
DEVICE_TESTS = "tests/test_devices.py"
ONE_PRESET_PER_FAMILY = (
    "capacitor_decoder/capacitor_decoder",
    "dinac_ae/dinac_ae",
    "fcdm_diffae/semdisdiffae_p32_v2",
    "full_capacitor/full_capacitor",
    "m_diffae/mdiffae_v1",
)
COMPILED_PRESETS = (
    "capacitor_decoder/capacitor_decoder",  # the FCDM decoder (every family but m_diffae)
    "fcdm_diffae/semdisdiffae_p32_v2",  # the FCDM encoder, the thin p32 decoder
    "dinac_ae/dinac_ae",  # the transformer encoder (SDPA)
)
COMPILED_TOLERANCE = {"fp32": 1e-3, "bf16": 0.05}
"""Compiled vs eager output: max |diff| relative to the eager output's scale (at least 1).
Inductor fuses and reorders, so float32 differs by rounding; bf16 by a few bf16 steps."""


@dataclass(frozen=True)
class Profile:
    """What one run measures."""

    dtypes: tuple[str, ...]
    encode_cases: tuple[tuple[int, int, bool], ...]
    """(side, batch, with the FLUX.2 VAE)."""
    decode_sides: tuple[int, ...]
    presets: tuple[str, ...] | None
    """family/preset names; None = every published preset of every installed family."""
    compiled_presets: tuple[str, ...]
    compile_mode: str | None
    compiled_encode: tuple[int, int] | None
    """(side, batch) of the compiled encode row; None: no compiled encode."""
    compiled_decode_side: int
    repeats: int
    warmup: int
    value_check_side: int
    notes: list[str] = field(default_factory=list)


PROFILES = {
    # The cards: bf16 on CUDA; encode 256² batch 128, 512² batch 32 (with the FLUX.2 VAE, as
    # on the dinac_ae and full_capacitor cards) and 128 (semdisdiffae_p32_v2's card, ours
    # only); decode batch 1 at 512², 1024², 2048².
    "cuda": Profile(
        dtypes=("bf16",),
        encode_cases=((256, 128, True), (512, 32, True), (512, 128, False)),
        decode_sides=(512, 1024, 2048),
        presets=None,
        compiled_presets=COMPILED_PRESETS,
        compile_mode="max-autotune",
        compiled_encode=(256, 128),
        compiled_decode_side=512,
        repeats=10,
        warmup=3,
        value_check_side=512,
    ),
    # Short: every code path above on small sizes, float32 (bf16 is ~100x slower than float32
    # on CPUs without native bf16, which a CI machine may be), one preset per family.
    "cpu": Profile(
        dtypes=("fp32",),
        encode_cases=((128, 2, True),),
        decode_sides=(128,),
        presets=ONE_PRESET_PER_FAMILY,
        compiled_presets=COMPILED_PRESETS[:1],
        compile_mode=None,
        compiled_encode=None,
        compiled_decode_side=128,
        repeats=2,
        warmup=1,
        value_check_side=128,
        notes=["short CPU mode: one preset per family, small sizes; not the cards' cases"],
    ),
}

# The cards' figures (RTX 5090, bf16; benchmarks/README.md): (model, task, side, batch) ->
# ms per batch (encode) or per image (decode), peak MiB, FLUX.2 ms, FLUX.2 peak MiB.
CARD_FIGURES: dict[tuple[str, str, int, int], tuple[float, float | None, float | None, Any]] = {
    ("fcdm_diffae/semdisdiffae_p32_v2", "encode", 256, 128): (12.38, 567.8, None, None),
    ("fcdm_diffae/semdisdiffae_p32_v2", "encode", 512, 128): (53.49, 1353.8, None, None),
    ("dinac_ae/dinac_ae_d2", "encode", 256, 128): (69.56, 1606.5, 341.94, 12533.8),
    ("dinac_ae/dinac_ae", "encode", 256, 128): (50.25, 1569.7, 341.94, 12533.8),
    ("dinac_ae/dinac_ae_d2", "encode", 512, 32): (75.09, 1606.7, 355.64, 12533.8),
    ("dinac_ae/dinac_ae", "encode", 512, 32): (53.09, 1570.0, 355.64, 12533.8),
    ("full_capacitor/full_capacitor", "encode", 256, 128): (42.56, None, 383.41, None),
    ("full_capacitor/full_capacitor", "encode", 512, 32): (44.97, None, 353.58, None),
    ("fcdm_diffae/semdisdiffae_p32_v2", "decode", 512, 1): (3.89, 340.8, None, None),
    ("fcdm_diffae/semdisdiffae_p32_v2", "decode", 1024, 1): (9.79, 409.6, None, None),
    ("fcdm_diffae/semdisdiffae_p32_v2", "decode", 2048, 1): (51.90, 720.9, None, None),
    ("capacitor_decoder/capacitor_decoder", "decode", 512, 1): (11.40, 391.6, 21.14, 961.9),
    ("capacitor_decoder/capacitor_decoder", "decode", 1024, 1): (26.31, 601.4, 86.24, 2876.4),
    ("capacitor_decoder/capacitor_decoder", "decode", 2048, 1): (86.29, 1437.4, 405.84, 10531.4),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:1, ... or cpu")
    parser.add_argument("--skip-tests", action="store_true", help="skip the device tests")
    parser.add_argument("--machine", help="name in the results file names (default: device)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def environment(device: torch.device) -> dict[str, Any]:
    """machine_info (commit, load average at the start, ...) plus the driver and cuDNN."""
    info = machine_info(device)
    info["driver"] = nvidia_smi("driver_version") if device.type == "cuda" else None
    info["cudnn"] = torch.backends.cudnn.version() if device.type == "cuda" else None
    return info


def command_output(command: list[str]) -> str | None:
    """A command's stripped output, or None if it cannot run or fails."""
    try:
        done = subprocess.run(
            command, cwd=REPOSITORY, capture_output=True, text=True, timeout=60, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() or None


def nvidia_smi(field_name: str) -> str | None:
    """One `nvidia-smi --query-gpu` field of the first GPU (None without nvidia-smi)."""
    output = command_output(["nvidia-smi", f"--query-gpu={field_name}", "--format=csv,noheader"])
    return None if output is None else output.splitlines()[0]


def run_device_tests(device: torch.device) -> tuple[bool, str]:
    """`pytest tests/test_devices.py -k <device type>` in a subprocess; (passed, last line)."""
    command = [sys.executable, "-m", "pytest", DEVICE_TESTS, "-q", "-p", "no:cacheprovider"]
    command += ["-m", "devices", "-k", device.type]  # the marker is left out of plain pytest
    print("$", " ".join(command), flush=True)
    done = subprocess.run(command, cwd=REPOSITORY, capture_output=True, text=True)
    print(done.stdout[-3000:], done.stderr[-2000:], sep="\n", flush=True)
    lines = done.stdout.strip().splitlines()
    return done.returncode == 0, lines[-1] if lines else f"exit status {done.returncode}"


def build_candidates(profile: Profile, device: torch.device, dtype: torch.dtype) -> list:
    """The chosen presets (full size, random weights), the FLUX.2 VAE and its small decoder."""
    candidates = []
    for family_name, family in select_families(None).items():
        for preset in family.presets():
            name = f"{family_name}/{preset}"
            if profile.presets is None or name in profile.presets:
                config = family.config_class.preset(preset)
                candidates.append(
                    family_candidate(family, config, name, device=device, dtype=dtype)
                )
    candidates.append(flux2_candidate(device=device, dtype=dtype))
    candidates.append(flux2_candidate(device=device, dtype=dtype, small_decoder=True))
    return candidates


def timing_settings(profile: Profile) -> argparse.Namespace:
    """The settings `speed.measure_case` reads."""
    return argparse.Namespace(
        warmup=profile.warmup,
        repeats=profile.repeats,
        decode_only_resolutions=[],
        tile_tokens=None,
        compile_mode=profile.compile_mode,
    )


def cases_of(profile: Profile, dtype: str) -> list[tuple[speed.Case, bool]]:
    """(case, with the FLUX.2 models) in the order they are timed."""
    cases = [
        (speed.Case("encode", side, batch, dtype, "eager"), with_flux2)
        for side, batch, with_flux2 in profile.encode_cases
    ]
    cases += [
        (speed.Case("decode", side, 1, dtype, "eager"), True) for side in profile.decode_sides
    ]
    if profile.compiled_encode is not None:
        side, batch = profile.compiled_encode
        cases += [(speed.Case("encode", side, batch, dtype, "compile"), False)]
    cases += [(speed.Case("decode", profile.compiled_decode_side, 1, dtype, "compile"), False)]
    return cases


def chosen_for(
    candidates: list[Candidate], case: speed.Case, with_flux2: bool, profile: Profile
) -> list[Candidate]:
    flux2 = (FLUX2_NAME, FLUX2_SMALL_DECODER_NAME)
    chosen = [c for c in candidates if speed.runs(c, case)]
    if case.mode == "compile":
        return [c for c in chosen if c.name in profile.compiled_presets]
    return [c for c in chosen if with_flux2 or c.name not in flux2]


def compiled_difference(
    candidate: Candidate, case: speed.Case, profile: Profile, device, cache: dict
) -> float:
    """max |compiled - eager| / max(1, max |eager|) for one call on the same (seeded) inputs;
    the compiled call is kept in `cache` for the timed compile rows."""
    dtype = speed.DTYPES[case.dtype]
    options = {} if profile.compile_mode is None else {"mode": profile.compile_mode}
    with torch.inference_mode():
        torch.manual_seed(0)  # the decode's unseeded noise: the same draw for both calls
        eager = speed.case_input(candidate, case, device, dtype)().float()
        with speed.prepared([candidate], case, None):
            timed = speed.compiled(candidate, case.task, cache, options)
            torch.manual_seed(0)
            compiled = speed.case_input(timed, case, device, dtype)().float()
    scale = max(1.0, eager.abs().max().item())
    return (compiled - eager).abs().max().item() / scale


def measure(profile: Profile, device: torch.device) -> tuple[list[dict], list[dict], dict]:
    """The speed rows, the compiled-vs-eager checks and the GEMM peaks."""
    rows: list[dict[str, Any]] = []
    compiled_checks = []
    gemm_flops = {
        name: gemm_peak_flops(device, speed.DTYPES[name], 8192 if device.type == "cuda" else 1024)
        for name in profile.dtypes
    }
    settings = timing_settings(profile)
    for dtype in profile.dtypes:
        candidates = build_candidates(profile, device, speed.DTYPES[dtype])
        flop_counts: dict = {}
        compile_cache: dict = {}
        for case, with_flux2 in cases_of(profile, dtype):
            chosen = chosen_for(candidates, case, with_flux2, profile)
            if case.mode == "compile":
                for candidate in chosen:
                    difference = compiled_difference(
                        candidate, case, profile, device, compile_cache
                    )
                    compiled_checks.append(
                        {
                            "model": candidate.name,
                            "case": case.__dict__,
                            "relative_difference": difference,
                            "tolerance": COMPILED_TOLERANCE[dtype],
                            "ok": difference <= COMPILED_TOLERANCE[dtype],
                        }
                    )
            print(f"timing {case} ({len(chosen)} models)", flush=True)
            rows += speed.measure_case(chosen, case, settings, device, flop_counts, compile_cache)
        del candidates, compile_cache
        if device.type == "cuda":
            torch.cuda.empty_cache()
    speed.add_flux2_ratios(rows, gemm_flops)
    speed.add_mode_ratios(rows)
    add_small_decoder_ratios(rows)
    return rows, compiled_checks, gemm_flops


def add_small_decoder_ratios(rows: list[dict[str, Any]]) -> None:
    """Speedup and peak-memory reduction of each decode row against the FLUX.2 small decoder."""
    fields = ("task", "resolution", "batch", "dtype", "mode")
    small = {tuple(r[f] for f in fields): r for r in rows if r["model"] == FLUX2_SMALL_DECODER_NAME}
    for row in rows:
        reference = small.get(tuple(row[f] for f in fields))
        row["speedup_vs_flux2_small"] = (
            None if reference is None else reference["ms_image"] / row["ms_image"]
        )
        has_memory = reference is not None and row["peak_mib"] and reference["peak_mib"]
        row["peak_reduction_vs_flux2_small"] = (
            1.0 - row["peak_mib"] / reference["peak_mib"] if has_memory else None
        )


def value_check_cost(profile: Profile, device: torch.device, dtype: str) -> dict[str, Any]:
    """Decode with the input value checks on and off, interleaved: what the check costs."""
    family_name, preset = profile.compiled_presets[0].split("/")
    family = select_families([family_name])[family_name]
    candidate = family_candidate(
        family,
        family.config_class.preset(preset),
        profile.compiled_presets[0],
        device=device,
        dtype=speed.DTYPES[dtype],
    )
    case = speed.Case("decode", profile.value_check_side, 1, dtype, "eager")
    call = speed.case_input(candidate, case, device, speed.DTYPES[dtype])
    seconds: dict[bool, list[float]] = {True: [], False: []}
    with torch.inference_mode():
        for index in range(profile.warmup + 2 * profile.repeats):
            for checking in (True, False):
                with value_checks(checking):
                    elapsed = time_call(call, device)
                if index >= profile.warmup:
                    seconds[checking].append(elapsed)
    on, off = median_ms(seconds[True]), median_ms(seconds[False])
    # The check alone, on the decode's latents and on an encode's images of the same size:
    # one aminmax pass and one read-back (on CUDA the read-back waits for queued work).
    side = profile.value_check_side
    latents = torch.randn(candidate.latent_shape(1, side, side), device=device)
    images = torch.rand(1, 3, side, side, device=device) * 2 - 1
    check_ms = {
        name: Timer(
            "check_values(name, tensor, limit)",
            globals={"check_values": check_values, "name": name, "tensor": tensor, "limit": limit},
        )
        .blocked_autorange(min_run_time=0.2)
        .median
        * 1000.0
        for name, tensor, limit in (("latents", latents, None), ("images", images, 3.0))
    }
    return {
        "model": candidate.name,
        "case": case.__dict__,
        "ms_with_checks": on,
        "ms_without_checks": off,
        "difference_ms": on - off,
        "check_latents_ms": check_ms["latents"],
        "check_images_ms": check_ms["images"],
        "seconds": {"with": seconds[True], "without": seconds[False]},
    }


def card_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """One line per card figure: the card's value, ours, and the FLUX.2 comparisons."""
    ours = {
        (r["model"], r["task"], r["resolution"], r["batch"]): r
        for r in rows
        if r["mode"] == "eager" and r["dtype"] == "bf16"
    }
    lines = []
    for (model, task, side, batch), (ms, peak, flux2_ms, flux2_peak) in CARD_FIGURES.items():
        row = ours.get((model, task, side, batch))
        per = "ms_batch" if task == "encode" else "ms_image"
        card_speedup = None if flux2_ms is None else flux2_ms / ms

        def cell(value: Any, form: str = "{:.2f}") -> str:
            return "—" if value is None else form.format(value)

        lines.append(
            [
                model,
                task,
                f"{side}²",
                str(batch),
                cell(ms),
                cell(row and row[per]),
                cell(peak, "{:.1f}"),
                cell(row and row["peak_mib"], "{:.1f}"),
                cell(card_speedup, "{:.2f}x"),
                cell(row and row["speedup_vs_flux2"], "{:.2f}x"),
                cell(row and row.get("speedup_vs_flux2_small"), "{:.2f}x"),
                cell(flux2_peak, "{:.1f}"),
                cell(row and row["flux2_peak_mib"], "{:.1f}"),
            ]
        )
    return lines


CARD_HEADERS = [
    "model",
    "task",
    "size",
    "batch",
    "card ms",
    "our ms",
    "card peak MiB",
    "our peak MiB",
    "card speedup vs FLUX.2",
    "our speedup vs FLUX.2",
    "our speedup vs FLUX.2 small decoder",
    "card FLUX.2 peak MiB",
    "our FLUX.2 peak MiB",
]


def render(
    machine: str,
    info: dict[str, Any],
    checks: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    compiled_checks: list[dict[str, Any]],
    value_cost: dict[str, Any],
    settings: dict[str, Any],
) -> str:
    lines = [f"# GPU check on {machine}", ""]
    lines += [f"- {key}: `{value}`" for key, value in info.items()]
    lines += ["", "## Checks", ""]
    lines.append(
        markdown_table(
            ["check", "result", "detail"],
            [[c["name"], "ok" if c["ok"] else "FAILED", c["detail"]] for c in checks],
        )
    )
    lines += ["", "## The cards' figures and ours", ""]
    lines += ["bf16, eager; ms per batch for encode, per image for decode; — = not measured in"]
    lines += ["this profile or not on the card.", "", markdown_table(CARD_HEADERS, card_rows(rows))]
    lines += ["", "## Compiled against eager (same inputs)", ""]
    lines.append(
        markdown_table(
            ["model", "case", "max |diff| / scale", "tolerance"],
            [
                [c["model"], str(c["case"]), f"{c['relative_difference']:.2e}", c["tolerance"]]
                for c in compiled_checks
            ],
        )
    )
    lines += ["", "## What the input value checks cost (decode; one host sync per call)", ""]
    lines.append(
        markdown_table(
            [
                "model",
                "size",
                "decode with checks ms",
                "without ms",
                "difference ms",
                "check of the latents alone ms",
                "check of images this size ms",
            ],
            [
                [
                    value_cost["model"],
                    f"{value_cost['case']['resolution']}²",
                    f"{value_cost['ms_with_checks']:.3f}",
                    f"{value_cost['ms_without_checks']:.3f}",
                    f"{value_cost['difference_ms']:.3f}",
                    f"{value_cost['check_latents_ms']:.4f}",
                    f"{value_cost['check_images_ms']:.4f}",
                ]
            ],
        )
    )
    small = [r for r in rows if r.get("speedup_vs_flux2_small") is not None]
    if small:
        lines += ["", "## Decode against the FLUX.2 small decoder", ""]
        lines.append(
            markdown_table(
                ["model", "size", "dtype", "ms/image", "speedup", "peak memory reduction"],
                [
                    [
                        r["model"],
                        f"{r['resolution']}²",
                        r["dtype"],
                        f"{r['ms_image']:.2f}",
                        f"{r['speedup_vs_flux2_small']:.2f}x",
                        "n/a"
                        if r["peak_reduction_vs_flux2_small"] is None
                        else f"{100 * r['peak_reduction_vs_flux2_small']:.1f}%",
                    ]
                    for r in small
                ],
            )
        )
    speed_page = render_speed_page(machine, info, settings, rows)
    lines += ["", speed_page.replace("# Speed on", "# All timings on", 1)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(
            "gpu_check: --device cuda: no CUDA device here (torch.cuda.is_available() is "
            "False); run `bash benchmarks/gpu_check.sh --device cpu` for the short CPU check",
            file=sys.stderr,
        )
        return 2
    if device.type not in PROFILES:
        print(f"gpu_check: --device: expected cuda or cpu, got {args.device}", file=sys.stderr)
        return 2
    profile = PROFILES[device.type]
    started = time.perf_counter()
    info = environment(device)
    machine = args.machine or f"gpu-check-{default_machine_name(device)}"
    for key, value in info.items():
        print(f"{key}: {value}", flush=True)
    checks: list[dict[str, Any]] = []
    if not args.skip_tests:
        passed, summary = run_device_tests(device)
        checks.append({"name": f"{DEVICE_TESTS} on {device.type}", "ok": passed, "detail": summary})
    rows, compiled_checks, gemm_flops = measure(profile, device)
    for check in compiled_checks:
        checks.append(
            {
                "name": f"compiled = eager: {check['model']} {check['case']['task']}",
                "ok": check["ok"],
                "detail": f"{check['relative_difference']:.2e} <= {check['tolerance']}",
            }
        )
    measured = all(r["ms_batch"] > 0 for r in rows) and bool(rows)
    checks.append({"name": "every case timed", "ok": measured, "detail": f"{len(rows)} rows"})
    if device.type == "cuda":
        with_memory = all(r["peak_mib"] is not None for r in rows)
        checks.append({"name": "peak memory of every row", "ok": with_memory, "detail": ""})
    value_cost = value_check_cost(profile, device, profile.dtypes[0])
    info["elapsed_s"] = round(time.perf_counter() - started, 1)
    settings = {
        "profile": device.type,
        "repeats (median of)": profile.repeats,
        "warm-up calls": profile.warmup,
        "encode cases (side, batch, with FLUX.2)": profile.encode_cases,
        "decode": "batch 1, 1 step, PDG off, random latents",
        "weights": "random (PyTorch default init); FLUX.2 VAE = AutoencoderKLFlux2() defaults",
        "compiled": f"{list(profile.compiled_presets)}, mode={profile.compile_mode}",
        "notes": profile.notes,
        "gemm_tflops": {name: flops / 1e12 for name, flops in gemm_flops.items()},
    }
    markdown = render(machine, info, checks, rows, compiled_checks, value_cost, settings)
    print(markdown)
    data = {
        "machine": machine,
        "info": info,
        "settings": settings,
        "checks": checks,
        "compiled_checks": compiled_checks,
        "value_check_cost": value_cost,
        "results": rows,
    }
    write_results(args.out_dir, machine, markdown, data)
    failed = [c["name"] for c in checks if not c["ok"]]
    print(f"gpu_check: {len(checks) - len(failed)} of {len(checks)} checks passed", end="")
    print(f"; FAILED: {failed}" if failed else "", f"({info['elapsed_s']} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
