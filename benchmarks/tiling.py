"""Decode of large images with and without exact tiling: time and peak memory, few calls each.

For sizes where a repeat costs minutes on a CPU (4096², 8192²), `speed.py --tiled-resolutions`
would spend a warm-up call per case; this script makes one call per (side, mode) that measures
peak memory, then `--repeats` timed calls (default 1; 0 times the measuring call itself, which
pays the page faults of `memory.freed_memory_returned`), in the order given, on random weights
and random latents (batch 1, 1 step, PDG off, noise drawn before the call). The weights are
drawn N(0, 0.02²) (`randomize_weights`): PyTorch's default init leaves the AdaLN gates at zero,
every block an identity, and a tiled result would then match the untiled one trivially.

    uv run python -m benchmarks.tiling --sides 2048 4096 8192 --modes tiled

Modes: `untiled`, `tiled` (`enable_tiling()`: recomputes the hidden activations) and
`tiled-keep` (`enable_tiling(recompute=False)`). Peak memory = growth of the resident set
(CPU) or of the allocated memory (CUDA) during the call. Writes results/tiling-<machine>.md
and .json; a failing call stops the run.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from diffae_core.families import installed_families
from diffae_testing import randomize_weights

from .memory import peak_growth_bytes, tensor_bytes
from .report import (
    RESULTS_DIR,
    default_machine_name,
    header_lines,
    machine_info,
    markdown_table,
    write_results,
)
from .timing import time_call

MODES = ("untiled", "tiled", "tiled-keep")
WEIGHT_SCALE = 0.02
"""Std of the random weights: outputs of order 1 at full size (0.2, the tests' scale, explodes)."""
MIB = 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.tiling", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--family", default="capacitor_decoder")
    parser.add_argument("--preset", help="default: the family's first preset")
    parser.add_argument("--sides", nargs="+", type=int, default=[2048])
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--tile-tokens", type=int, help="enable_tiling(tile_tokens)")
    parser.add_argument(
        "--repeats", type=int, default=1, help="timed calls after the measuring one (median)"
    )
    parser.add_argument("--tiny", action="store_true", help="the family's tiny config (smoke)")
    parser.add_argument("--device", help="cpu, cuda, ... (default: cuda if available)")
    parser.add_argument("--machine", help="name in the results file names")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.repeats < 0:
        parser.error(f"--repeats: expected a count >= 0, got {args.repeats}")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the calls, print the Markdown, write the results files; returns the JSON data."""
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = machine_info(device)  # the commit and the load before anything runs
    family = installed_families()[args.family]
    preset = args.preset or family.presets()[0]
    config = family.tiny_config if args.tiny else family.config_class.preset(preset)
    model = randomize_weights(family.model_class(config), scale=WEIGHT_SCALE).to(device).eval()
    patch = config.effective_patch_size
    tiling: dict[str, Any] = {} if args.tile_tokens is None else {"tile_tokens": args.tile_tokens}
    rows = []
    reference_images = {}
    for side in args.sides:
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(
            1, config.latent_channels, side // patch, side // patch, generator=generator
        )
        latents = latents.to(device)
        noise = (torch.randn(1, 3, side, side, generator=generator) * config.pixel_noise_std).to(
            device
        )
        for mode in args.modes:
            model.disable_tiling()
            if mode != "untiled":
                model.enable_tiling(**tiling, recompute=mode == "tiled")
            print(f"decode {side}x{side} {mode}", flush=True)
            start = time.perf_counter()
            images = []
            call = functools.partial(model.decode, latents, side, side, noise=noise)
            growth = peak_growth_bytes(
                lambda call=call, images=images: images.append(call()), device
            )
            seconds = time.perf_counter() - start
            if args.repeats:
                seconds = statistics.median(time_call(call, device) for _ in range(args.repeats))
            if mode == "untiled":
                reference_images[side] = images[0]
            reference = reference_images.get(side)
            difference = None
            if reference is not None:
                scale = max(1.0, reference.abs().max().item())
                difference = (images[0] - reference).abs().max().item() / scale
            images_max = images[0].abs().max().item()
            del images
            rows.append(
                {
                    "model": f"{args.family}/{'tiny' if args.tiny else preset}",
                    "resolution": side,
                    "mode": mode,
                    "seconds": seconds,
                    "max_abs_diff_vs_untiled": difference,
                    "output_max_abs": images_max,
                    "peak_growth_mib": None if growth is None else growth / MIB,
                    "weights_mib": tensor_bytes(model) / MIB,
                }
            )
    model.disable_tiling()
    untiled = {r["resolution"]: r for r in rows if r["mode"] == "untiled"}
    for row in rows:
        reference = untiled.get(row["resolution"])
        row["time_vs_untiled"] = (
            None if reference is None else row["seconds"] / reference["seconds"]
        )
        row["peak_vs_untiled"] = (
            row["peak_growth_mib"] / reference["peak_growth_mib"]
            if reference is not None and row["peak_growth_mib"] and reference["peak_growth_mib"]
            else None
        )
    machine = args.machine or default_machine_name(device)

    def cell(value: float | None, digits: int) -> str:
        return "n/a" if value is None else f"{value:.{digits}f}"

    table = markdown_table(
        [
            "model",
            "resolution",
            "mode",
            "s",
            "peak growth MiB",
            "time / untiled",
            "peak / untiled",
            "max abs diff vs untiled ÷ max(1, max abs untiled)",
        ],
        [
            [
                r["model"],
                f"{r['resolution']}x{r['resolution']}",
                r["mode"],
                cell(r["seconds"], 2),
                cell(r["peak_growth_mib"], 0),
                cell(r["time_vs_untiled"], 2),
                cell(r["peak_vs_untiled"], 2),
                "n/a"
                if r["max_abs_diff_vs_untiled"] is None
                else f"{r['max_abs_diff_vs_untiled']:.1e}",
            ]
            for r in rows
        ],
    )
    settings = {
        "call": "decode, batch 1, 1 step, PDG off",
        "timed calls per row (median)": args.repeats or "the measuring call",
        **tiling,
    }
    lines = [f"# Tiled decode on {machine}", "", *header_lines(info)]
    lines += [f"- {key}: `{value}`" for key, value in settings.items()]
    lines += ["- peak growth: resident set (CPU, polled every 0.5 ms) or allocated (CUDA)"]
    markdown = "\n".join([*lines, "", table]) + "\n"
    data = {"machine": machine, "info": info, "settings": settings, "results": rows}
    print(markdown)
    write_results(args.out_dir, f"tiling-{machine}", markdown, data)
    return data


if __name__ == "__main__":
    main()
