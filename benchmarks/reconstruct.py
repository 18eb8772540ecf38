"""`reconstruct` (`diffae reconstruct`) against the bare model: what the tool adds to encode +
decode.

    uv run python -m benchmarks.reconstruct                         # the embedded model
    uv run python -m benchmarks.reconstruct --preset fcdm_diffae/semdisdiffae_p32_v2

On the four bundled sample photos (`diffae.images.sample_photos`, or `--images`):

- **model**: the model loaded and each photo read and fitted once, as the tool does
  (`read_image`, `fit_image`, crop); then `model.encode` + `model.decode` with the inference
  config `diffae reconstruct` uses without decoding options (the family's defaults, seed 0),
  timed over all the photos.
- **command**: what `diffae reconstruct PHOTOS --out TMP --quiet` runs, in this process:
  choosing and loading the model from its folder (`diffae.models`), then
  `diffae.reconstruction.reconstruct` (reading, fitting, encoding, decoding, writing the PNGs
  and the PSNR table). Interpreter start-up, imports and argument parsing are not in it;
  `--subprocess` also times the whole `python -m diffae reconstruct` for reference.

Both are timed `--repeats` times after one untimed warm-up each, interleaved, medians. The ratio
command ÷ model is the command's overhead (issue 15's target: at most 1.2). `--preset
FAMILY/PRESET` saves that full-size preset with random weights to a temporary folder first
(full size is what the published models are). Writes results/reconstruct-<machine>.md/.json.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from diffae.console import Console
from diffae.images import fit_image, read_image, sample_photos
from diffae.models import EMBEDDED_MODEL, choose_device, choose_model, load_model
from diffae.reconstruction import reconstruct

from .models import save_preset
from .report import RESULTS_DIR, header_lines, machine_info, markdown_table, write_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.reconstruct", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--preset", help="FAMILY/PRESET at full size, random weights (default: the embedded model)"
    )
    parser.add_argument("--images", nargs="+", type=Path, help="default: the sample photos")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--subprocess", action="store_true", help="also time `python -m diffae`")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--machine", default="cpu", help="name in the results file names")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats: expected a positive count, got {args.repeats}")
    if args.preset is not None and args.preset.count("/") != 1:
        parser.error(f"--preset: expected FAMILY/PRESET, got {args.preset!r}")
    return args


def bare_model(
    model_dir: Path | None, images: list[Path], family: str | None
) -> Callable[[], float]:
    """A call timing one pass of bare encode + decode over the photos, loaded and fitted once
    as the tool would (same model, same inference config); returns seconds."""
    choice = choose_model(None if model_dir is None else str(model_dir), family)
    model = choice.family.model_class.from_pretrained(choice.location)
    decoding = choice.family.inference_config_class(seed=0)
    patch = model.config.effective_patch_size
    fitted = [fit_image(read_image(path)[0], patch, "crop").image for path in images]

    def seconds() -> float:
        start = time.perf_counter()
        for image in fitted:
            latents = model.encode(image)
            model.decode(latents, image.shape[-2], image.shape[-1], inference_config=decoding)
        return time.perf_counter() - start

    return seconds


def command_seconds(
    images: list[Path], model_dir: Path | None, family: str | None, out: Path
) -> float:
    """Seconds of what one `diffae reconstruct` run does, in this process: choose and load the
    model, then `reconstruct`; a failing run stops the benchmark."""
    start = time.perf_counter()
    choice = choose_model(None if model_dir is None else str(model_dir), family)
    name = None if model_dir is None else str(model_dir)
    loaded = load_model(choice, choose_device(None), Console(quiet=True), name=name)
    decoding = choice.family.inference_config_class(seed=0)
    result = reconstruct(images, out, loaded, inference_config=decoding)
    seconds = time.perf_counter() - start
    if result.skipped:
        raise SystemExit(f"reconstruct skipped {result.skipped}")
    return seconds


def subprocess_seconds(argv: list[str]) -> float:
    """Wall seconds of `python -m diffae ...` in a fresh interpreter."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "diffae", *argv], check=True)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison, print the Markdown, write the results files; returns the JSON data."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    images = args.images or sample_photos()
    with tempfile.TemporaryDirectory() as temporary:
        scratch = Path(temporary)
        model_dir, family = None, None
        if args.preset is not None:
            family, preset = args.preset.split("/")
            model_dir = scratch / "model"
            save_preset(family, preset, model_dir)
        label = args.preset or f"embedded ({EMBEDDED_MODEL.name})"
        command = ["reconstruct", *map(str, images), "--quiet"]
        command += [] if model_dir is None else ["--model", str(model_dir)]
        command += [] if family is None else ["--family", family]
        samples: dict[str, list[float]] = {"model": [], "command": [], "subprocess": []}
        model_pass = bare_model(model_dir, images, family)
        runs: list[tuple[str, Callable[[str], float]]] = [
            ("model", lambda out: model_pass()),
            ("command", lambda out: command_seconds(images, model_dir, family, Path(out))),
        ]
        if args.subprocess:
            runs.append(("subprocess", lambda out: subprocess_seconds([*command, "--out", out])))
        for repeat in range(args.repeats + 1):  # the first round is the warm-up
            for name, run in runs:
                seconds = run(str(scratch / f"out-{name}-{repeat}"))
                if repeat:
                    samples[name].append(seconds)
    medians = {name: statistics.median(s) for name, s in samples.items() if s}
    ratio = medians["command"] / medians["model"]
    rows = [
        [label, len(images), f"{medians['model']:.2f}", f"{medians['command']:.2f}"]
        + ([f"{medians['subprocess']:.2f}"] if "subprocess" in medians else [])
        + [f"{ratio:.2f}"]
    ]
    headers = ["model", "photos", "encode + decode s", "diffae reconstruct s"]
    headers += ["python -m diffae s"] if "subprocess" in medians else []
    headers += ["command ÷ model"]
    info = machine_info(torch.device("cpu"))
    lines = [f"# diffae reconstruct overhead on {args.machine}", "", *header_lines(info)]
    lines += [f"- images: {', '.join(path.name for path in images)}"]
    lines += [f"- median of {args.repeats} interleaved runs after one warm-up each"]
    markdown = "\n".join([*lines, "", markdown_table(headers, rows)]) + "\n"
    data = {
        "machine": args.machine,
        "info": info,
        "model": label,
        "images": [str(path) for path in images],
        "seconds": samples,
        "medians": medians,
        "command_over_model": ratio,
    }
    print(markdown)
    stem = f"reconstruct-{(args.preset or 'embedded').replace('/', '-')}-{args.machine}"
    write_results(args.out_dir, stem, markdown, data)
    return data


if __name__ == "__main__":
    main()
