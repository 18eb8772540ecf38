"""The `train` command: train an FCDM-family autoencoder from a config, or fine-tune a model."""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import torch

from ..console import CliError, Console
from ..distributed import Processes
from ..faults import writable_folder
from ..images import find_images
from ..models import choose_device, choose_family, choose_model, read_config
from ..training import (
    STATE_NAME,
    TrainingConfig,
    TrainingSettings,
    read_state_metadata,
    train,
)
from .arguments import positive_int

TRAINABLE_FAMILIES = ("fcdm_diffae", "full_capacitor")
"""Families whose model is an FCDM autoencoder (`diffae_core.fcdm`)."""
SETTING_FLAGS = {field.name: field.name.replace("_", "-") for field in fields(TrainingSettings)}


def train_command(args: argparse.Namespace, console: Console) -> int:
    """Build (--config) or load (--init) the model, or resume --out; train it; say where it is."""
    threads = torch.get_num_threads()
    try:
        return run_training(args, console)
    finally:
        torch.set_num_threads(threads)  # --threads is this run's, not the caller's (tests)


def run_training(args: argparse.Namespace, console: Console) -> int:
    out = Path(args.out)
    if Processes.from_environment().main:
        writable_folder(out)  # a missing parent or a read-only folder, before any model
    # Checked before anything loads: a device that is not there is the user's to fix.
    device_name = None if args.device is None else str(choose_device(args.device))
    settings_given = {
        name: getattr(args, name) for name in SETTING_FLAGS if getattr(args, name) is not None
    }
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.resume:
        if args.config or args.init:
            raise CliError("--resume continues --out as it was: no --config or --init with it")
        state = read_state_metadata(out)  # the tensors are read once, by `train`
        settings = TrainingSettings(**(state["settings"] | settings_given))
        config_data, source = state["config"], f"{out / STATE_NAME}"
        recorded = state.get("family")
        if args.family is not None and recorded not in (None, args.family):
            raise CliError(
                f"--family {args.family}: {out} is a run of a {recorded} model; drop --family"
            )
        family, _ = choose_family(source, config_data, args.family or recorded)
        model = family.model_class(family.config_class.from_dict(dict(config_data)))
    elif (args.config is None) == (args.init is None):
        raise CliError("give exactly one of --config CONFIG.json (new model) and --init MODEL")
    else:
        if (out / STATE_NAME).exists():
            raise CliError(f"{out} already holds a run; continue it with --resume")
        settings = TrainingSettings(**settings_given)
        if args.config is not None:
            path = Path(args.config)
            config_data = read_config(path.parent) if path.name == "config.json" else None
            if config_data is None:
                config_data = json.loads(path.read_text(encoding="utf-8"))
            family, _ = choose_family(str(path), config_data, args.family)
            torch.manual_seed(settings.seed)  # the initial weights
            model = family.model_class(family.config_class.from_dict(dict(config_data)))
        else:
            choice = choose_model(args.init, args.family)
            family = choice.family
            model = family.model_class.from_pretrained(choice.location, device="cpu")
    if family.name not in TRAINABLE_FAMILIES:
        raise CliError(f"train: supports {TRAINABLE_FAMILIES}, not {family.name}")
    eval_images, problems = find_images(args.eval) if args.eval else ([], [])
    if problems:
        raise CliError("--eval: " + "; ".join(f"{name}: {reason}" for name, reason in problems))
    config = TrainingConfig(
        data=Path(args.data),
        out=out,
        settings=settings,
        resume=args.resume,
        device=device_name,
        eval_images=tuple(eval_images),
        family=family.name,
    )
    train(model, config, console=console)
    if Processes.from_environment().main:  # once under torchrun
        console.note(
            f"the EMA weights are in {out / 'model'}/ (load them with --model {out}/model)"
        )
    return 0


def add_train_parser(
    commands: argparse._SubParsersAction, common: argparse.ArgumentParser, help_text: str
):
    """The `train` sub-command's options (one per `TrainingSettings` field)."""
    parser = commands.add_parser(
        "train",
        parents=[common],
        help=help_text,
    )

    parser.add_argument("data", metavar="FOLDER", help="a folder of images (searched recursively)")
    parser.add_argument("--out", required=True, help="run folder: model/, state and log.jsonl")
    parser.add_argument("--config", help="config.json of a new model (random initial weights)")
    parser.add_argument("--init", help="a model to fine-tune: repo id or local directory")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--device", help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads per process")
    parser.add_argument(
        "--eval", nargs="*", metavar="IMAGES", help="images whose PSNR is logged at each save"
    )
    defaults = TrainingSettings()
    for name, flag in SETTING_FLAGS.items():
        default = getattr(defaults, name)
        parser.add_argument(
            f"--{flag}",
            dest=name,
            type=type(default),
            choices=("all", "decoder") if name == "train" else None,
            help=f"default {default}",
        )
    return parser
