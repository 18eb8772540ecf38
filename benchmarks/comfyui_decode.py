"""FLUX.2 latent decoding inside ComfyUI: the stock FLUX.2 VAE, BFL's small decoder, taef2 and
capacitor_decoder through our node, side by side in one ComfyUI process.

Each decoder decodes the same random FLUX.2 LATENT [1, 128, H/16, W/16] through the stock
`VAEDecode` node's function (`nodes.VAEDecode().decode`, under `torch.inference_mode()` as
ComfyUI runs nodes), so ComfyUI's own model management, batching and output handling are in
the measurement; fp32 on the CPU (`--cpu --fp32-vae`).
Weights are random: the FLUX.2 VAE from diffusers' default config, the small decoder at its
published widths (`benchmarks.flux2`), taef2 as ComfyUI builds it from a state dict (TAESD with
128 latent channels, `tae_latent_channels`), and capacitor_decoder's published config through
our `Capacitor decoder (FLUX.2)` node with the FLUX.2 VAE connected (1 DDIM step, its default).
Per decoder: a warm-up call counting FLOPs (FlopCounterMode), one measuring peak resident-set
growth, then the timed calls (median kept); results are kept decoder by decoder, so
`--time-limit` can stop a run on a loaded machine without losing what finished. The load average is
recorded: on a shared machine the time ratios move, the FLOP ratios do not.

ComfyUI is not a dependency of the workspace: this runs in two processes. From the workspace,

    uv run python -m benchmarks.comfyui_decode --comfyui path/to/ComfyUI \\
        --comfyui-python path/to/comfyui-venv/bin/python

writes the models into a temporary folder (diffusers is needed for the FLUX.2 files) and runs
itself again with ComfyUI's Python (`--child`), which must have `comfyui-diffae` installed (see
tests/test_comfyui_server.py for such a venv); the results go to
benchmarks/results/comfyui-decode-<machine>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from .flops import count_flops
from .memory import peak_growth_bytes
from .timing import median_ms, time_call

ROOT = Path(__file__).resolve().parents[1]
FULL, SMALL, TAEF2, CAPACITOR = "FLUX.2 VAE", "FLUX.2 small decoder", "taef2", "capacitor_decoder"
MIB = 2**20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.comfyui_decode", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--comfyui", type=Path, required=True, help="the ComfyUI source folder")
    parser.add_argument("--comfyui-python", type=Path, help="ComfyUI's venv python")
    parser.add_argument("--resolutions", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads in ComfyUI")
    parser.add_argument("--machine", default="cpu")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--time-limit", type=float, help="stop ComfyUI's process after this many seconds"
    )
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is None and args.comfyui_python is None:
        parser.error("--comfyui-python: expected ComfyUI's venv python (with comfyui-diffae)")
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive count, got {args.repeats}")
    return args


# -- the workspace side -------------------------------------------------------------------
def write_models(folder: Path) -> None:
    """The FLUX.2 VAE and small decoder (diffusers files, same random latent statistics) and a
    full-size capacitor_decoder holding those statistics (`vae/capacitor_decoder/`)."""
    from safetensors.torch import save_file

    from capacitor_decoder import CapacitorDecoder, CapacitorDecoderConfig

    from .flux2 import build_flux2_vae

    generator = torch.Generator().manual_seed(0)
    mean, var = torch.randn(128, generator=generator), 0.5 + torch.rand(128, generator=generator)
    for name, small in (("flux2_full", False), ("flux2_small", True)):
        vae = build_flux2_vae(small_decoder=small)
        vae.bn.running_mean.copy_(mean)
        vae.bn.running_var.copy_(var)
        state = {key: value.contiguous() for key, value in vae.state_dict().items()}
        save_file(state, str(folder / f"{name}.safetensors"))
    decoder = CapacitorDecoder(CapacitorDecoderConfig())
    decoder.latent_norm_running_mean.copy_(mean)
    decoder.latent_norm_running_var.copy_(var)
    decoder.save_pretrained(folder / "vae" / "capacitor_decoder")


def render(data: dict[str, Any]) -> str:
    lines = [
        "# FLUX.2 latent decoding in ComfyUI (stock VAEDecode), fp32, CPU",
        "",
        *[f"- {key}: `{value}`" for key, value in data["info"].items()],
        "",
        "| resolution | decoder | decoder params (M) | ms (median) | GFLOPs | peak growth (MiB) "
        "| time vs FLUX.2 VAE | time vs small decoder | FLOPs vs FLUX.2 VAE "
        "| FLOPs vs small decoder |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def ratio(value: float | None, form: str) -> str:
        return "n/a" if value is None else format(value, form)

    for row in data["results"]:
        lines.append(
            f"| {row['resolution']}² | {row['decoder']} | {row['parameters'] / 1e6:.1f} "
            f"| {row['ms']:.0f} | {row['flops'] / 1e9:.0f} | {row['peak_mib']:.0f} "
            f"| {ratio(row['speedup_vs_full'], '.2f')}x | {ratio(row['speedup_vs_small'], '.2f')}x "
            f"| {ratio(row['flops_vs_full'], '.3f')} | {ratio(row['flops_vs_small'], '.3f')} |"
        )
    lines += [
        "",
        "Speedups are FLUX.2 time / this time (above 1: faster); FLOP columns are this / "
        "theirs (below 1: less work). Time figures depend on the machine's load (recorded "
        "above, before and after); FLOP ratios do not.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.child is not None:
        child(args)
        return None
    from .report import write_results

    with tempfile.TemporaryDirectory(prefix="diffae-comfyui-bench-") as directory:
        folder = Path(directory)
        write_models(folder)
        command = [str(args.comfyui_python), "-m", "benchmarks.comfyui_decode", "--child"]
        command += [str(folder), "--comfyui", str(args.comfyui.resolve())]
        command += ["--resolutions", *map(str, args.resolutions), "--repeats", str(args.repeats)]
        if args.threads:
            command += ["--threads", str(args.threads)]
        try:
            subprocess.run(command, cwd=ROOT, check=True, timeout=args.time_limit)
        except subprocess.TimeoutExpired:
            print(f"stopped after --time-limit {args.time_limit} s; keeping what finished")
        results = folder / "results.json"
        if not results.is_file():
            raise SystemExit("no decoder finished: nothing to report")
        data = json.loads(results.read_text())
    markdown = render(data)
    print(markdown)
    write_results(args.out_dir, f"comfyui-decode-{args.machine}", markdown, data)
    return data


# -- the ComfyUI side -----------------------------------------------------------------------
def comfy_decoders(folder: Path, comfyui: Path) -> dict[str, Any]:
    """name -> a VAE object as ComfyUI's nodes hold it; imports ComfyUI (in its venv)."""
    sys.path.insert(0, str(comfyui))
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv[1:] = ["--cpu", "--fp32-vae"]
    import comfy.sd
    import comfy.taesd.taesd
    import folder_paths
    from safetensors.torch import load_file

    from comfyui_diffae.nodes import CapacitorFlux2VAE

    full = comfy.sd.VAE(sd=load_file(folder / "flux2_full.safetensors"))
    small = comfy.sd.VAE(sd=load_file(folder / "flux2_small.safetensors"))
    taef2_state = comfy.taesd.taesd.TAESD(latent_channels=128).state_dict()
    taef2 = comfy.sd.VAE(sd=taef2_state, metadata={"tae_latent_channels": 128})
    folder_paths.add_model_folder_path("vae", str(folder / "vae"))
    capacitor = CapacitorFlux2VAE.execute(
        decoder_name="capacitor_decoder/model.safetensors", dtype="fp32", flux2_vae=full
    ).result[0]
    return {FULL: full, SMALL: small, TAEF2: taef2, CAPACITOR: capacitor}


def decoder_parameters(name: str, vae: Any) -> int:
    """Parameters of what decodes (the VAE's decoder and post-quant conv; all of capacitor)."""
    model = vae.first_stage_model
    if name == CAPACITOR:
        modules = [model]
    elif name == TAEF2:
        modules = [model.taesd_decoder]
    else:
        modules = [model.decoder, getattr(model, "post_quant_conv", None)]
    return sum(p.numel() for m in modules if m is not None for p in m.parameters())


def decode_call(decode_node: Any, vae: Any, latents: torch.Tensor) -> Any:
    """The stock node's decode, under inference mode as ComfyUI's executor runs every node."""

    def call() -> Any:
        with torch.inference_mode():
            return decode_node.decode(vae, {"samples": latents})

    return call


def child(args: argparse.Namespace) -> None:
    """Measure in ComfyUI's process; results.json is rewritten after each decoder, so a run
    stopped by `--time-limit` keeps what it finished."""
    if args.threads:
        torch.set_num_threads(args.threads)
    decoders = comfy_decoders(args.child, args.comfyui)
    import nodes

    decode_node = nodes.VAEDecode()
    cpu = torch.device("cpu")
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    for side in args.resolutions:
        generator = torch.Generator().manual_seed(side)
        latents = torch.randn(1, 128, side // 16, side // 16, generator=generator)
        for name, vae in decoders.items():  # cheapest last would lose the reference: in order
            call = decode_call(decode_node, vae, latents)
            with count_flops() as flops:  # the warm-up call
                images = call()[0]
            assert tuple(images.shape) == (1, side, side, 3), (name, tuple(images.shape))
            peak = peak_growth_bytes(call, cpu)
            seconds = [time_call(call, cpu) for _ in range(args.repeats)]
            rows.append(
                {
                    "resolution": side,
                    "decoder": name,
                    "parameters": decoder_parameters(name, vae),
                    "ms": median_ms(seconds),
                    "seconds": seconds,
                    "flops": flops.total,
                    "peak_mib": (peak or 0) / MIB,
                }
            )
            write_child_results(args, rows, load_before)
            print(f"timed {name} at {side}²", flush=True)


def write_child_results(
    args: argparse.Namespace, rows: list[dict[str, Any]], load_before: tuple[float, ...]
) -> None:
    """Ratios to the FLUX.2 rows of the same resolution (None until measured); results.json."""
    from .report import machine_info

    references = {(r["resolution"], r["decoder"]): r for r in rows}
    for row in rows:
        for label, name in (("full", FULL), ("small", SMALL)):
            reference = references.get((row["resolution"], name))
            has = reference is not None
            row[f"speedup_vs_{label}"] = reference["ms"] / row["ms"] if has else None
            row[f"flops_vs_{label}"] = row["flops"] / reference["flops"] if has else None
    info = machine_info(torch.device("cpu"))
    info.update(
        {
            "comfyui": str(args.comfyui),
            "load average before (1, 5, 15 min)": [round(x, 2) for x in load_before],
            "load average after (1, 5, 15 min)": [round(x, 2) for x in os.getloadavg()],
            "timed calls (median of)": args.repeats,
            "order": "per resolution, each decoder: FLOP-counted warm-up, peak, timed calls",
            "weights": "random; capacitor_decoder 1 DDIM step (its default), seed 0",
        }
    )
    data = {"info": info, "results": rows}
    (args.child / "results.json").write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
