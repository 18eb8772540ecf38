"""The `encode` and `decode` commands: images <-> latents in safetensors files."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffae_core.families import Family

from ..console import CliError, Console
from ..images import IMAGE_SUFFIXES, unique_names, write_png
from ..latents import (
    BadLatentFile,
    LatentItem,
    find_latent_files,
    read_description,
    read_latent_file,
)
from ..latents import write_latent_file as write_latents
from ..models import (
    EMBEDDED_NAME,
    LoadedModel,
    ModelChoice,
    choose_device,
    choose_model,
    inference_config,
    load_model,
    model_fingerprint,
    model_folder,
)
from ..runs import (
    ImageItem,
    Run,
    batched,
    claim_output_file,
    claim_output_folder,
    fitted_images,
    list_images,
    no_inputs_error,
    output_folder,
    refuse_overwriting,
    run_model,
)
from .arguments import inference_fields, require_encoder


def encode_output(out: str) -> tuple[Path, bool]:
    """(--out, whether it is one .safetensors file); a CliError for a file/folder mix-up."""
    path = Path(out)
    if path.suffix != ".safetensors":
        return output_folder(out), False
    if path.is_dir():
        raise CliError(f"--out: expected a .safetensors file, got the folder {path}")
    return path, True


def encode(args: argparse.Namespace, console: Console) -> int:
    """Images -> latents (as `model.encode` returns them) in safetensors files."""
    run = Run(console)
    out, one_file = encode_output(args.out)
    device = choose_device(args.device)
    choice = choose_model(args.model, args.family)
    require_encoder(choice.family, "encode")
    named = list_images(args.images, run)
    planned = [out] if one_file else [out / f"{name}.safetensors" for _, name in named]
    refuse_overwriting([path for path, _ in named], planned)
    if one_file:
        claim_output_file(out, args.overwrite)
    else:
        claim_output_folder(out, args.overwrite)
    fingerprint = model_fingerprint(model_folder(choice))
    loaded = load_model(choice, device, console, dtype=args.dtype, name=args.model)
    header = {
        "family": loaded.family.name,
        "model": loaded.source,
        "fingerprint": fingerprint,
        "whitened": callable(getattr(loaded.model, "whiten", None)),
        "patch": loaded.patch,
    }
    tensors: dict[str, Tensor] = {}
    descriptions: list[dict[str, Any]] = []
    shapes: set[str] = set()
    with console.progress(len(named), "encode") as bar:
        for batch in batched(
            fitted_images(named, loaded.patch, args.fit, run, bar),
            args.batch_size,
            lambda item: item.fitted.image.shape,
        ):
            images = torch.cat([item.fitted.image for item in batch]).to(loaded.device)
            names = [str(item.path) for item in batch]
            latents = run_model(loaded.model, images, loaded.model.encode, names)
            bar.update(len(batch))
            for item, item_latents in zip(batch, latents.float().cpu().split(1), strict=True):
                descriptions.append(describe(item))
                if one_file:
                    tensors[item.name] = item_latents
                else:
                    path = out / f"{item.name}.safetensors"
                    write_latents(path, {item.name: item_latents}, descriptions[-1:], header)
                shapes.add("x".join(str(size) for size in item_latents.shape[1:]))
    if one_file and tensors:
        write_latents(out, tensors, descriptions, header)
    if descriptions:
        console.note(
            f"wrote latents of {len(descriptions)} images to {out} "
            f"(C x h x w: {', '.join(sorted(shapes))})"
        )
    return run.exit_status()


def describe(item: ImageItem) -> dict[str, Any]:
    """The metadata item of one image's latents (see `latents`)."""
    height, width = item.fitted.source_size
    return {
        "tensor": item.name,
        "source": str(item.path),
        "source_height": height,
        "source_width": width,
        "fit": item.fitted.fit,
        "box": list(item.fitted.box),
    }


def read_latent_items(
    arguments: list[str], run: Run
) -> tuple[list[tuple[str, LatentItem]], dict[Path, dict[str, Any]]]:
    """(output stem, latents) of every image in the files given, and each file's description;
    unreadable files skipped, a CliError when nothing at all can be read."""
    files, problems = find_latent_files(arguments)
    items: list[LatentItem] = []
    descriptions: dict[Path, dict[str, Any]] = {}
    for path in files:
        try:
            if looks_like_image(path):
                raise BadLatentFile(
                    "this is an image, not a latents file: use `diffae reconstruct` or "
                    "`diffae encode`"
                )
            descriptions[path] = read_description(path) or {}
            items += read_latent_file(path)
        except BadLatentFile as error:
            problems.append((str(path), str(error)))
    if not items:
        raise no_inputs_error("latents", problems)
    for argument, reason in problems:
        run.skip(argument, reason)
    run.inputs = len(items) + len(problems)
    names = unique_names([item.name for item in items])
    return list(zip(names, items, strict=True)), descriptions


IMAGE_SIGNATURES = (b"\x89PNG", b"\xff\xd8\xff", b"RIFF", b"GIF8", b"BM")


def looks_like_image(path: Path) -> bool:
    """Whether a file is an image by its name or its first bytes (PNG, JPEG, WebP, GIF, BMP)."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        return handle.read(4).startswith(IMAGE_SIGNATURES)


def check_recorded_model(
    descriptions: dict[Path, dict[str, Any]], choice: ModelChoice, model: str
) -> None:
    """A CliError, before loading, when a latents file records another model than --model
    (by fingerprint; by family for files without one). `--any-model` skips this."""
    fingerprint = None
    for path, description in descriptions.items():
        recorded = description.get("fingerprint")
        family = description.get("family")
        if recorded is not None and fingerprint is None:
            fingerprint = model_fingerprint(model_folder(choice))
        if recorded not in (None, fingerprint) or family not in (None, choice.family.name):
            written_by = description.get("model", "another model")
            written_by = (
                "the embedded model (no --model)" if written_by == "embedded" else written_by
            )
            raise CliError(
                f"{path}: encoded with {written_by} ({family}), not with {model}; decode with "
                "that model, or pass --any-model to decode with this one anyway"
            )


def switch_options(family: Family, args: argparse.Namespace) -> dict[str, Any]:
    """The `decode` keywords of the family switches given; a CliError for a switch the chosen
    family does not declare."""
    options: dict[str, Any] = {}
    declared = {switch.flag: switch for switch in family.decode_switches}
    for name, value in vars(args).items():
        if not name.startswith("switch_") or not value:
            continue
        flag = name.removeprefix("switch_").replace("_", "-")
        if flag not in declared:
            raise CliError(
                f"--{flag}: the {family.name} model's decode does not take it (it is a switch "
                f"of another family); its decode takes only the latents its own encode writes"
            )
        options[declared[flag].keyword] = declared[flag].value
    return options


def channel_problem(latents: Tensor, loaded: LoadedModel) -> str | None:
    """Why the model cannot take latents [N, C, h, w] of this many channels, or None."""
    expected = getattr(loaded.model.config, "latent_channels", None)
    channels = int(latents.shape[1])
    if not isinstance(expected, int) or channels == expected:
        return None
    problem = f"latents have {channels} channels, {loaded.family.name} takes {expected}"
    if channels * 4 == expected:
        problem += " (2x2-patchify them first, e.g. FLUX.2 [32, h, w] -> [128, h/2, w/2])"
    return problem


def decode(args: argparse.Namespace, console: Console) -> int:
    """Latents in safetensors files -> PNG images (cropped back where the encoder padded)."""
    run = Run(console)
    out = output_folder(args.out)
    device = choose_device(args.device)
    choice = choose_model(args.model, args.family)
    decoding = inference_config(choice.family, inference_fields(args))
    options = switch_options(choice.family, args)
    named, descriptions = read_latent_items(args.latents, run)
    claim_output_folder(out, args.overwrite)
    if not args.any_model:
        model = EMBEDDED_NAME if args.model is None else args.model
        check_recorded_model(descriptions, choice, model)
    loaded = load_model(choice, device, console, dtype=args.dtype, name=args.model)
    written = 0
    with console.progress(len(named), "decode") as bar:
        for batch in batched(named, args.batch_size, lambda pair: tuple(pair[1].latents.shape)):
            latents = torch.cat([item.latents for _, item in batch]).to(loaded.device)
            names = [name for name, _ in batch]
            bar.update(len(batch))
            problem = channel_problem(latents, loaded)
            if problem is not None:
                for name in names:
                    run.skip(name, problem)
                continue
            finite = [bool(torch.isfinite(item.latents).all()) for _, item in batch]
            if not all(finite):  # an input that cannot be decoded (the batch holds one size)
                for name, ok in zip(names, finite, strict=True):
                    if not ok:
                        run.skip(name, "the latents hold NaN or inf")
                batch = [pair for pair, ok in zip(batch, finite, strict=True) if ok]
                names = [name for name, _ in batch]
                if not batch:
                    continue
                latents = torch.cat([item.latents for _, item in batch]).to(loaded.device)
            height, width = (int(size) * loaded.patch for size in latents.shape[-2:])

            def step(latents: Tensor, height: int = height, width: int = width) -> Tensor:
                decoded = loaded.model.decode(
                    latents, height, width, inference_config=decoding, **options
                )
                return decoded.float().cpu()

            images = run_model(loaded.model, latents, step, names)
            for (name, item), image in zip(batch, images, strict=True):
                write_png(out / f"{name}.png", item.content(image))
                written += 1
    if written:
        console.note(f"wrote {written} images to {out}/")
    return run.exit_status()
