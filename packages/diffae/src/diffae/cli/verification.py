"""The `verify` command: settle the open points of a model's family with its real weights."""

from __future__ import annotations

import argparse
from pathlib import Path

from diffae_core.loading import CONFIG_NAME, WEIGHTS_NAME

from ..console import CliError, Console
from ..images import BadImage, find_images, sample_photos
from ..models import choose_device, choose_dtype, choose_model, resolve_model
from ..verify import (
    format_report,
    header_results,
    judge,
    load_fitted,
    readings,
    reconstruction_psnr,
)


def verify(args: argparse.Namespace, console: Console) -> int:
    """Print the header check and the PSNR of every reading; exit 1 unless the default stands."""
    device = choose_device(args.device)
    choice = choose_model(args.model, args.family)
    family = choice.family
    folder = choice.location if isinstance(choice.location, Path) else resolve_model(args.model)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise CliError(f"{folder} has no {WEIGHTS_NAME}: verify needs the real weights")
    config = family.config_class.load(folder / CONFIG_NAME)
    results, investigation = header_results(family, weights, config)
    paths: list[Path] = []
    if not callable(getattr(family.model_class, "encode", None)):
        console.note(f"{family.name} is decode-only: header checks only, no reconstructions")
    else:
        paths, problems = find_images(args.images) if args.images else (sample_photos(), [])
        if problems:
            raise CliError("; ".join(f"{name}: {reason}" for name, reason in problems))
        try:
            images = load_fitted(paths, config.effective_patch_size)
        except BadImage as error:
            raise CliError(f"images: {error}") from None
        settings = family.inference_config_class(seed=0)
        dtype = choose_dtype(args.dtype, device)
        classes = readings(family)
        with console.progress(len(results), "readings") as bar:
            for result in results:
                if result.loadable:
                    model = classes[result.label].from_pretrained(
                        folder, device=device, dtype=dtype
                    )
                    result.psnr_db = reconstruction_psnr(model, images, settings)
                bar.update(1)
    verdict = judge(results)
    print(format_report(family, args.model, results, investigation, paths, verdict))
    return 0 if verdict.default_stands else 1
