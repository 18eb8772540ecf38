"""The decode a FLUX.2 pipeline runs, with its own VAE and with capacitor_decoder swapped in.

`Flux2Pipeline` ends with `pipe.vae.decode(latents, return_dict=False)[0]` on raw FLUX.2
latents [1, 32, H/8, W/8]. This times that call for diffusers' `AutoencoderKLFlux2()` (default
config) and for `CapacitorDecoder(...).as_flux2_vae(vae)` (published config, one DDIM step,
PDG off; the adapter's 2x2 patchify included), both full size with random weights (the values
do not change the work), same latents, in one process. Each is warmed up, then the repeats are
interleaved (round-robin) and the median reported.

    uv run python -m benchmarks.pipeline_vae --resolutions 512 --repeats 3

writes benchmarks/results/pipeline-vae-<machine>.md and .json.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from capacitor_decoder import CapacitorDecoder, CapacitorDecoderConfig
from capacitor_decoder.family import TINY_CONFIG

from .flux2 import FLUX2_DOWNSAMPLING, FLUX2_LATENT_CHANNELS, FLUX2_NAME, build_flux2_vae
from .report import (
    RESULTS_DIR,
    default_machine_name,
    header_lines,
    machine_info,
    markdown_table,
    write_results,
)
from .timing import median_ms, time_call

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
CAPACITOR_NAME = "capacitor_decoder.as_flux2_vae"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[512])
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tiny", action="store_true", help="tiny models: a smoke run")
    parser.add_argument("--machine", default=None)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def build_vaes(device: torch.device, dtype: torch.dtype, tiny: bool) -> dict[str, Any]:
    """The FLUX.2 VAE and the adapter over its encoder, by name."""
    flux2 = build_flux2_vae(device=device, dtype=dtype, tiny=tiny)
    decoder = CapacitorDecoder(TINY_CONFIG if tiny else CapacitorDecoderConfig())
    decoder = decoder.to(device=device, dtype=dtype).eval()
    # Random weights: the decoder holds its default statistics, not this VAE's.
    swapped = decoder.as_flux2_vae(flux2, check_statistics=False)
    return {FLUX2_NAME: flux2, CAPACITOR_NAME: swapped}


def decoder_parameters(name: str, vae: Any) -> int:
    """Parameters the decode runs through (FLUX.2: post_quant_conv + decoder)."""
    modules = [vae.decoder, vae.post_quant_conv] if name == FLUX2_NAME else [vae.capacitor_decoder]
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def decode_call(vae: Any, latents: torch.Tensor) -> Any:
    """The pipeline's decode call, bound to its arguments."""
    return lambda: vae.decode(latents, return_dict=False)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    info = machine_info(device)  # the commit and the load before anything runs
    vaes = build_vaes(device, dtype, args.tiny)
    rows = []
    for resolution in args.resolutions:
        grid = resolution // FLUX2_DOWNSAMPLING
        generator = torch.Generator().manual_seed(0)
        latents = torch.randn(1, FLUX2_LATENT_CHANNELS, grid, grid, generator=generator)
        latents = latents.to(device=device, dtype=dtype)
        seconds: dict[str, list[float]] = {name: [] for name in vaes}
        with torch.inference_mode():
            for vae in vaes.values():
                for _ in range(args.warmup):
                    vae.decode(latents, return_dict=False)
            for _ in range(args.repeats):
                for name, vae in vaes.items():
                    seconds[name].append(time_call(decode_call(vae, latents), device))
        reference = median_ms(seconds[FLUX2_NAME])
        for name, vae in vaes.items():
            ms = median_ms(seconds[name])
            rows.append(
                {
                    "model": name,
                    "resolution": resolution,
                    "batch": 1,
                    "dtype": args.dtype,
                    "decoder_parameters": decoder_parameters(name, vae),
                    "ms": ms,
                    "seconds": seconds[name],
                    "speedup_vs_flux2": reference / ms,
                }
            )
    data = {
        "machine": info,
        "timed": "vae.decode(raw FLUX.2 latents [1, 32, H/8, W/8], return_dict=False): the call "
        "Flux2Pipeline makes; capacitor_decoder with 1 DDIM step, PDG off",
        "weights": "random (PyTorch default init); FLUX.2 VAE = AutoencoderKLFlux2() defaults",
        "repeats": args.repeats,
        "warmup": args.warmup,
        "results": rows,
    }
    table = markdown_table(
        ["model", "resolution", "dtype", "decoder params (M)", "ms/image", "speedup vs FLUX.2"],
        [
            [
                row["model"],
                f"{row['resolution']}x{row['resolution']}",
                row["dtype"],
                f"{row['decoder_parameters'] / 1e6:.1f}",
                f"{row['ms']:.1f}",
                f"{row['speedup_vs_flux2']:.2f}x",
            ]
            for row in rows
        ],
    )
    markdown = "\n".join(
        [
            "# FLUX.2 pipeline decode: FLUX.2 VAE vs capacitor_decoder swapped in",
            "",
            *header_lines(info),
            f"- timed: `{data['timed']}`",
            f"- weights: `{data['weights']}`",
            f"- median of {args.repeats} interleaved repeats after {args.warmup} warm-up call(s)",
            "",
            table,
            "",
        ]
    )
    machine = args.machine or default_machine_name(device)
    write_results(args.out_dir, f"pipeline-vae-{machine}", markdown, data)
    print(table)
    return data


if __name__ == "__main__":
    main()
