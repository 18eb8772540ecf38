"""The `diffae` command line: sub-commands and their options, and the checks of what was
parsed (no work)."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from importlib import import_module
from typing import TYPE_CHECKING

from ..console import CliError

if TYPE_CHECKING:
    from diffae_core.families import DecodeSwitch, Family

# The core's names (`diffae_core.config.SAMPLER_NAMES`, `diffae_core.config.SCHEDULE_KINDS`),
# written here because importing those modules imports torch, seconds before `--help` could
# answer; tests/test_newcomer.py holds them equal.
SAMPLER_NAMES = ("ddim", "dpmpp_2m")
SCHEDULE_KINDS = ("linear", "cosine")
LAZY_COMMANDS = {
    "train": (
        "training",
        "add_train_parser",
        "train a new FCDM autoencoder (--config) or fine-tune one (--init) on image files; "
        "runs under torchrun too",
    ),
    "demo": (
        "demo",
        "add_demo_parser",
        "reconstruct the bundled sample photos with the embedded model (offline): PNGs, "
        "comparison grids, PSNR vs bicubic resampling, a results viewer",
    ),
    "viewer": (
        "viewing",
        "add_viewer_parser",
        "one static page comparing reconstruction runs over the same photos (folders written "
        "by `diffae reconstruct --viewer`); opens from file:// or as a static Space",
    ),
}
"""Sub-commands whose options are defined in their own modules, which import torch: `main`
reads them only when that command runs (module, function, one-line help)."""

FIT_MODES = ("crop", "pad")
"""How an image whose sides are not multiples of the model's patch size is made to fit."""

DTYPE_NAMES = ("float32", "fp32", "bfloat16", "bf16", "float16", "fp16")

DESCRIPTION = """\
Run the diffae diffusion autoencoders over image files.

  diffae demo                          # the embedded model on the bundled photos, offline
  diffae reconstruct photos/ --model data-archetype/semdisdiffae_p32_v2 --out recon/ --grid
  diffae encode photos/ --model MODEL --out latents/
  diffae decode latents/ --model MODEL --out decoded/
  diffae inspect MODEL_OR_FILE
  diffae verify MODEL [IMAGES ...]
  diffae bundle MODEL --out bundle/    # a folder to `hf upload`, with the code that runs it
  diffae viewer recon-a/ recon-b/ --out page/   # one page comparing reconstruct --viewer runs
  torchrun --nproc-per-node 8 -m diffae encode-dataset photos/ --model MODEL --out dataset/
  diffae train images/ --config config.json --out run/    # or --init MODEL; torchrun works
"""


OVERWRITE_HELP = (
    "replace an earlier run's outputs in --out: its PNGs, grids/, metrics and latent files "
    "are removed first (other files are kept)"
)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def _common_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--family",
        help="the model family, when it cannot be detected (see `diffae inspect`)",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars, notes or tables; problems still go to stderr "
        "(inspect still prints its report)",
    )
    return parser


def _model_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("model")
    group.add_argument(
        "--model",
        help="Hugging Face repo id or a local directory (default: the small model embedded in "
        "this package, no download)",
    )
    group.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    group.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        help="weight dtype (default: bfloat16 on CUDA, float32 otherwise)",
    )
    group.add_argument(
        "--batch-size", type=positive_int, default=1, help="images per forward pass (default 1)"
    )
    return parser


def _fit_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--fit",
        choices=FIT_MODES,
        default="crop",
        help="sides not multiples of the patch size: centre-crop them (default) or pad them "
        "(edge pixels, centred; outputs are cropped back). Images are never resized.",
    )
    return parser


def _inference_options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("decoding (defaults: the family's inference config)")
    group.add_argument("--steps", type=positive_int, help="decoder steps (num_steps)")
    group.add_argument("--sampler", choices=SAMPLER_NAMES, help="the diffusion sampler")
    group.add_argument("--schedule", choices=SCHEDULE_KINDS, help="spacing of the steps in t")
    group.add_argument(
        "--pdg-strength", type=float, help="turn path-drop guidance on with this strength"
    )
    group.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the decoder's initial noise, one draw per batch (default 0)",
    )
    return parser


def decode_switches(families: Iterable[object]) -> dict[str, list[tuple[str, DecodeSwitch]]]:
    """Every `--flag` the installed families declare for decode: flag -> [(family, switch)]."""
    switches: dict[str, list[tuple[str, DecodeSwitch]]] = {}
    for family in families:
        for switch in getattr(family, "decode_switches", ()):
            switches.setdefault(switch.flag, []).append((family.name, switch))
    return switches


def switch_dest(flag: str) -> str:
    """The argparse attribute of a family's `--flag`."""
    return "switch_" + flag.replace("-", "_")


def build_parser(
    families: Iterable[object] = (), only: str | None = None
) -> argparse.ArgumentParser:
    """The `diffae` parser with its sub-commands; `families` add their decode switches.

    only: the command about to run. The `LAZY_COMMANDS` other than it get only their name and
    help, so `diffae --help` and the other commands' argument errors load no torch."""
    parser = argparse.ArgumentParser(
        prog="diffae",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common, model, fit, inference = (
        _common_options(),
        _model_options(),
        _fit_options(),
        _inference_options(),
    )

    reconstruct = commands.add_parser(
        "reconstruct",
        parents=[common, model, fit, inference],
        help="encode and decode images; write PNGs and a PSNR table",
    )
    reconstruct.add_argument(
        "images", nargs="+", metavar="IMAGES", help="PNG/JPEG/WebP files or folders"
    )
    reconstruct.add_argument("--out", required=True, help="output folder (new or empty)")
    reconstruct.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    reconstruct.add_argument(
        "--grid",
        action="store_true",
        help="also write original | reconstruction | error map | latent PCA per image",
    )
    reconstruct.add_argument(
        "--viewer",
        action="store_true",
        help="also write OUT/viewer/index.html, a page to look through the results (and keep "
        "the originals and latent PCA it needs, for `diffae viewer`)",
    )

    encode = commands.add_parser(
        "encode", parents=[common, model, fit], help="images -> latents in safetensors"
    )
    encode.add_argument(
        "images", nargs="+", metavar="IMAGES", help="PNG/JPEG/WebP files or folders"
    )
    encode.add_argument(
        "--out",
        required=True,
        help="a .safetensors file (all latents) or a folder (one file per image)",
    )
    encode.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)

    decode = commands.add_parser(
        "decode", parents=[common, model, inference], help="latents in safetensors -> PNG images"
    )
    decode.add_argument(
        "latents", nargs="+", metavar="LATENTS", help=".safetensors files or folders"
    )
    decode.add_argument("--out", required=True, help="output folder (new or empty)")
    decode.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    decode.add_argument(
        "--any-model",
        action="store_true",
        help="decode with --model even when the latents file records another model",
    )
    for flag, declared in decode_switches(families).items():
        names = ", ".join(name for name, _ in declared)
        decode.add_argument(
            f"--{flag}",
            dest=switch_dest(flag),
            action="store_true",
            help=f"{declared[0][1].help}; only for {names}",
        )

    encode_dataset = commands.add_parser(
        "encode-dataset",
        parents=[common, model, fit],
        help="a folder tree or list of images -> Parquet shards of latents with statistics "
        "(resumable; under torchrun, one share of the shards per process)",
    )
    encode_dataset.add_argument(
        "input",
        metavar="INPUT",
        help="a folder (searched recursively for PNG/JPEG/WebP) or a text file of image paths, "
        "one a line, relative to the file's folder",
    )
    encode_dataset.add_argument(
        "--out", required=True, help="dataset folder: manifest.json and data/*.parquet"
    )
    encode_dataset.add_argument(
        "--shard-size", type=positive_int, default=1000, help="images per shard (default 1000)"
    )
    encode_dataset.add_argument(
        "--resize",
        type=positive_int,
        metavar="N",
        help="resize the shorter side to N px (bicubic, antialiased) before --fit",
    )
    encode_dataset.add_argument(
        "--num-workers",
        type=int,
        default=0,
        help="DataLoader worker processes reading images (default 0: the main process)",
    )

    inspect = commands.add_parser(
        "inspect",
        parents=[common],
        help="family, config, latent shapes and stored tensors of a model, from its files",
    )
    inspect.add_argument(
        "target",
        metavar="MODEL_OR_FILE",
        help="repo id, model directory, model.safetensors, or a latents file",
    )
    inspect.add_argument(
        "--check",
        action="store_true",
        help="also build the model (on the meta device: no memory, but torch is imported) and "
        "compare model.safetensors with it key by key, and count its parameters",
    )
    verify = commands.add_parser(
        "verify",
        parents=[common],
        help="settle the family's open points with the real weights: header and PSNR per "
        "reading; exit 1 when another reading beats the default",
    )
    verify.add_argument("model", metavar="MODEL", help="Hugging Face repo id or a local directory")
    verify.add_argument(
        "images", nargs="*", metavar="IMAGES", help="images or folders (default: the sample photos)"
    )
    verify.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    verify.add_argument(
        "--dtype",
        choices=DTYPE_NAMES,
        help="weight dtype (default: bfloat16 on CUDA, else float32)",
    )

    bundle = commands.add_parser(
        "bundle",
        parents=[common],
        help="a folder to upload to the Hub: the model files, a model card and the family's "
        "code, needing only torch, safetensors and huggingface_hub",
    )
    bundle.add_argument("model", metavar="MODEL", help="Hugging Face repo id or a local directory")
    bundle.add_argument("--out", required=True, help="a new (or empty) folder")
    bundle.add_argument(
        "--repo-id",
        help="the Hub repo it will be uploaded to, for the card's usage (default: <user>/<repo>)",
    )
    bundle.add_argument(
        "--viewer",
        nargs="+",
        metavar="RUN_DIR",
        help="also put the results viewer of these runs (`reconstruct --viewer` folders, the "
        "first the reference) in OUT/viewer/ and link it from the card",
    )
    for name, (module, function, help_text) in LAZY_COMMANDS.items():
        if only is None or only == name:
            add_parser = getattr(import_module(f"{__package__}.{module}"), function)
            add_parser(commands, common, help_text)
        else:
            commands.add_parser(name, help=help_text)
    return parser


INFERENCE_FLAGS = {
    "steps": "num_steps",
    "sampler": "sampler",
    "schedule": "schedule",
    "seed": "seed",
}
"""Command-line option -> inference config field (--pdg-strength sets pdg and pdg_strength)."""


def inference_fields(args: argparse.Namespace) -> dict[str, object]:
    """The inference config fields the decoding options given on the command line set."""
    fields = {
        field: getattr(args, flag)
        for flag, field in INFERENCE_FLAGS.items()
        if getattr(args, flag, None) is not None
    }
    if getattr(args, "pdg_strength", None) is not None:
        fields |= {"pdg": True, "pdg_strength": args.pdg_strength}
    return fields


def require_encoder(family: Family, command: str) -> None:
    """A CliError, before loading, when the family's model has no `encode` (decode-only)."""
    if not callable(getattr(family.model_class, "encode", None)):
        raise CliError(
            f"{command}: the {family.name} model has no encode (it is decode-only); "
            "give its latents to `diffae decode` instead"
        )
