"""Image files <-> tensors through Pillow; fitting to a patch grid.

Images are float32 [1, 3, H, W] in [-1, 1]. Pillow is imported only when a file is touched, so
`diffae inspect` and the library work without it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from diffae_core.io import atomic_write

from .console import MissingDependency
from .metrics import quantize_8bit

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
"""What a folder is searched for (`find_images`: its files; `find_image_tree`: recursively)."""
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
"""Formats accepted by content, whatever a file's name says."""
CONVERTED_MODES = {
    "RGB": "",
    "RGBA": "RGBA -> RGB (alpha dropped)",
    "LA": "greyscale + alpha -> RGB (alpha dropped)",
    "L": "greyscale -> RGB",
    "1": "1-bit -> RGB",
    "P": "palette -> RGB",
    "PA": "palette + alpha -> RGB (alpha dropped)",
    "I;16": "16-bit greyscale -> RGB",
    "I;16B": "16-bit greyscale -> RGB",
}
"""Pillow modes read as RGB, with what the conversion does. 16-bit greyscale keeps its 16 bits
(scaled by 65535); other modes (32-bit integer or float, CMYK) would need a choice of scaling or
colour management, so they are refused."""
SIXTEEN_BIT_GREY = {"I;16", "I;16B"}
TRUNCATED_16_BIT_NOTE = "16-bit colour read as 8 bits per channel (Pillow keeps the high byte)"
"""Pillow opens a 16-bit RGB(A) PNG as 8-bit RGB(A); we say so rather than pretend."""
EXIF_ORIENTATION_TAG = 0x0112
EXIF_ORIENTATIONS = {
    2: "mirrored",
    3: "rotated 180°",
    4: "flipped vertically",
    5: "transposed",
    6: "rotated 90° clockwise",
    7: "transversed",
    8: "rotated 90° counter-clockwise",
}
"""What `ImageOps.exif_transpose` does for each EXIF orientation (1: already upright). Photos from
phones and cameras store the sensor's pixels plus this tag; viewers show them turned upright, and
so do we, in every command and in training."""


class BadImage(Exception):
    """One input cannot be used (unreadable, wrong mode, too small); it is skipped."""


def require_pillow() -> Any:
    """The `PIL.Image` module, or a MissingDependency saying how to install it."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingDependency(
            "reading and writing images needs Pillow, a dependency of diffae: pip install pillow"
        ) from None
    return Image


def sample_photos() -> list[Path]:
    """The four public-domain / CC0 photos shipped with this package (see `data/README.md`)."""
    folder = Path(__file__).resolve().parent / "data" / "photos"
    return sorted(folder.glob("*.png"))


def find_files(
    arguments: list[str], suffixes: tuple[str, ...]
) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named, and the files with one of `suffixes` in folders named (sorted, not
    recursive); and (argument, reason) for the arguments that are neither."""
    files: list[Path] = []
    problems: list[tuple[str, str]] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in suffixes
            )
            if not found:
                problems.append((argument, f"folder has no {'/'.join(suffixes)} files"))
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            problems.append((argument, "no such file or folder"))
    return files, problems


def find_images(arguments: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Images named and the images in folders named (sorted), and the arguments that are neither."""
    return find_files(arguments, IMAGE_SUFFIXES)


def find_image_tree(folder: Path) -> list[Path]:
    """Every PNG/JPEG/WebP file (by suffix) below `folder`, recursively, sorted by relative path;
    symbolic links to folders are not followed."""
    found = []
    for parent, _, names in os.walk(folder):
        found += [
            Path(parent, name) for name in names if Path(name).suffix.lower() in IMAGE_SUFFIXES
        ]
    return sorted(found, key=lambda path: path.relative_to(folder).parts)


def unique_names(stems: list[str]) -> list[str]:
    """Output names, one per stem: the stem itself, with _2, _3 ... where stems repeat."""
    taken: set[str] = set()
    names = []
    for stem in stems:
        name, count = stem, 1
        while name in taken:
            count += 1
            name = f"{stem}_{count}"
        taken.add(name)
        names.append(name)
    return names


def check_opened_image(image: Any) -> None:
    """BadImage unless an opened Pillow image is PNG/JPEG/WebP in a mode read as RGB."""
    if image.format not in IMAGE_FORMATS:
        raise BadImage(f"not PNG/JPEG/WebP (format {image.format})")
    if image.mode not in CONVERTED_MODES:
        raise BadImage(f"unsupported mode {image.mode!r}; expected one of {list(CONVERTED_MODES)}")


def exif_orientation(image: Any) -> int:
    """The EXIF orientation tag of an opened Pillow image (1, upright, when absent or invalid)."""
    orientation = image.getexif().get(EXIF_ORIENTATION_TAG, 1)
    return orientation if orientation in EXIF_ORIENTATIONS else 1


def truncated_16_bit(image: Any) -> bool:
    """True for a 16-bit RGB(A) PNG, which Pillow decodes to 8 bits per channel."""
    return (
        image.format == "PNG"
        and image.mode in ("RGB", "RGBA")
        and any(";16" in str(tile.args) for tile in image.tile)
    )


def probe_image(path: Path) -> tuple[int, int]:
    """(width, height) of an image `read_image` will take, upright (EXIF orientation applied),
    from its header; BadImage if not."""
    Image = require_pillow()
    try:
        with Image.open(path) as image:
            check_opened_image(image)
            width, height = image.size
            return (height, width) if exif_orientation(image) >= 5 else (width, height)
    except BadImage:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadImage(f"unreadable ({error})") from None


def read_image(path: Path) -> tuple[Tensor, str]:
    """A PNG/JPEG/WebP file -> ([1, 3, H, W] float32 in [-1, 1], note on what was converted).

    The image is turned upright by its EXIF orientation, as viewers show it; RGBA, greyscale and
    palette images become RGB; 16-bit greyscale keeps its 16 bits. The note says what was done
    ("" when nothing was).
    """
    pixels, note = _read_upright(path, "float32")
    return pixels.unsqueeze(0), note


def read_image_uint8(path: Path) -> Tensor:
    """A PNG/JPEG/WebP file -> [3, H, W] uint8 in [0, 255]: `quantize_8bit` of `read_image`'s
    pixels, decoded straight to 8 bits (no float copy; what training reads for every sample).

    The tensor is a channels-last view ([H, W, 3] in memory, as Pillow decodes).
    """
    return _read_upright(path, "uint8")[0]


def read_image_compact(path: Path) -> Tensor:
    """A PNG/JPEG/WebP file -> [3, H, W] in its own depth: uint8 in [0, 255] for 8-bit images,
    float32 in [-1, 1] for 16-bit greyscale. `to_unit_range` of it is `read_image`'s pixels,
    exactly; it is a quarter of their bytes for 8-bit images, and costs no float conversion.

    The uint8 tensor is a channels-last view, as `read_image_uint8`'s.
    """
    return _read_upright(path, "compact")[0]


def to_unit_range(pixels: Tensor) -> Tensor:
    """uint8 in [0, 255] -> float32 in [-1, 1] (x / 127.5 - 1, as `read_image` converts);
    a float tensor is returned as it is."""
    # in place on the new float tensor: the same operations, one allocation instead of three
    return pixels if pixels.is_floating_point() else pixels.float().div_(127.5).sub_(1.0)


def _read_upright(path: Path, depth: str) -> tuple[Tensor, str]:
    """[3, H, W] upright RGB and the conversion note; depth "float32" (in [-1, 1]), "uint8"
    or "compact" (uint8 unless the file holds 16-bit greyscale: then float32)."""
    Image = require_pillow()
    from PIL import ImageOps

    try:
        with Image.open(path) as image:
            check_opened_image(image)
            notes = [CONVERTED_MODES[image.mode]]
            if truncated_16_bit(image):
                notes.append(TRUNCATED_16_BIT_NOTE)
            orientation = exif_orientation(image)
            if orientation != 1:
                notes.append(f"{EXIF_ORIENTATIONS[orientation]} upright (EXIF orientation)")
            # Both copy the image even when they change nothing: at 1024² two 4 MB copies
            # (RGB is held as 4 bytes a pixel) that cost as much as the JPEG decode.
            upright = image if orientation == 1 else ImageOps.exif_transpose(image)
            if image.mode in SIXTEEN_BIT_GREY:
                pixels = _sixteen_bit_grey(upright)
                pixels = quantize_8bit(pixels) if depth == "uint8" else pixels
            else:
                rgb = upright if upright.mode == "RGB" else upright.convert("RGB")
                pixels = _eight_bit_rgb(rgb)
                pixels = to_unit_range(pixels) if depth == "float32" else pixels
    except BadImage:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise BadImage(f"unreadable ({error})") from None
    return pixels, "; ".join(note for note in notes if note)


def _eight_bit_rgb(rgb: Any) -> Tensor:
    """An RGB Pillow image -> [3, H, W] uint8 (a view of [H, W, 3])."""
    import numpy as np

    return torch.from_numpy(np.array(rgb)).permute(2, 0, 1)  # np.array: one writable copy


def _sixteen_bit_grey(grey: Any) -> Tensor:
    """A 16-bit greyscale Pillow image -> [3, H, W] float32 in [-1, 1], all 16 bits kept."""
    import numpy as np

    values = torch.from_numpy(np.asarray(grey, dtype=np.float32))  # [H, W] in [0, 65535]
    return (values / 32767.5 - 1.0).expand(3, *values.shape).contiguous()


PNG_LEVEL = 1
"""zlib level of the PNGs written: on reconstructions of the sample photos about half the time
of Pillow's default 6 for files about 10% larger (lossless either way)."""


def write_png(path: Path, image: Tensor) -> None:
    """Write [3, H, W] (float in [-1, 1], clamped, or uint8) as an 8-bit RGB PNG."""
    Image = require_pillow()
    pixels = image if image.dtype == torch.uint8 else quantize_8bit(image)
    array = pixels.permute(1, 2, 0).contiguous().cpu().numpy()  # [3, H, W] -> [H, W, 3] uint8
    picture = Image.fromarray(array)
    # Written under a temporary name and renamed: a killed run leaves no half-written PNG.
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG", compress_level=PNG_LEVEL))


@dataclass(frozen=True)
class Fitted:
    """An image made to fit the patch grid, and where the source pixels are.

    fit: "none", "crop" or "pad". box (top, left, height, width): for "crop" the region of the
    source that was kept; for "pad" where the source sits inside `image`; else the whole image.
    """

    image: Tensor
    fit: str
    box: tuple[int, int, int, int]
    source_size: tuple[int, int]

    def content(self, image: Tensor) -> Tensor:
        """[..., H, W] at the fitted size -> the source's pixels (padding removed)."""
        if self.fit != "pad":
            return image
        top, left, height, width = self.box
        return image[..., top : top + height, left : left + width]

    def describe(self) -> str:
        """'' when nothing was done, else e.g. 'cropped 70x64 -> 64x64 (centre)'."""
        height, width = self.source_size
        fitted_height, fitted_width = self.image.shape[-2:]
        if self.fit == "none":
            return ""
        verb = "cropped" if self.fit == "crop" else "padded"
        return f"{verb} {width}x{height} -> {fitted_width}x{fitted_height} (centre)"


def resize_shorter_side(image: Tensor, size: int) -> Tensor:
    """[1, 3, H, W] in [-1, 1] -> the shorter side `size` px, aspect kept (the longer side
    rounded), bicubic with antialiasing, clamped to [-1, 1]; unchanged when already so."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    shorter = min(height, width)
    if shorter == size:
        return image
    new_size = [max(1, round(side * size / shorter)) for side in (height, width)]
    resized = F.interpolate(image, size=new_size, mode="bicubic", antialias=True)
    return resized.clamp(-1.0, 1.0)


def fit_image(image: Tensor, multiple: int, mode: str) -> Fitted:
    """[1, 3, H, W] -> sides multiples of `multiple` by centre crop or centred edge padding."""
    height, width = int(image.shape[-2]), int(image.shape[-1])
    if height % multiple == 0 and width % multiple == 0:
        return Fitted(image, "none", (0, 0, height, width), (height, width))
    if mode == "crop":
        new_height, new_width = height // multiple * multiple, width // multiple * multiple
        if new_height == 0 or new_width == 0:
            raise BadImage(
                f"too small: {width}x{height} px, fit=crop needs at least "
                f"{multiple}x{multiple} (try fit=pad)"
            )
        top, left = (height - new_height) // 2, (width - new_width) // 2
        kept = image[..., top : top + new_height, left : left + new_width]
        return Fitted(kept, "crop", (top, left, new_height, new_width), (height, width))
    pad_height, pad_width = -height % multiple, -width % multiple
    top, left = pad_height // 2, pad_width // 2
    # F.pad order: (left, right, top, bottom); "replicate" repeats the edge pixels.
    padded = F.pad(image, (left, pad_width - left, top, pad_height - top), mode="replicate")
    return Fitted(padded, "pad", (top, left, height, width), (height, width))
