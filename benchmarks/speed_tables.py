"""The Markdown page of a speed run: machine, settings, fastest GEMM measured, encode and decode
tables, and the "speedup vs FLUX.2" table laid out as on the cards."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .flux2 import FLUX2_NAME
from .report import header_lines, markdown_table

Row = dict[str, Any]
Column = tuple[str, Callable[[Row], str]]


def _text(key: str) -> Callable[[Row], str]:
    return lambda row: str(row[key])


def _fixed(key: str, digits: int, scale: float = 1.0, suffix: str = "") -> Callable[[Row], str]:
    """Format `row[key] * scale` with `digits` decimals; 'n/a' when the value is unknown."""

    def cell(row: Row) -> str:
        value = row.get(key)
        return "n/a" if value is None else f"{value * scale:.{digits}f}{suffix}"

    return cell


def _side(row: Row) -> str:
    return f"{row['resolution']}x{row['resolution']}"


def _dtype(row: Row) -> str:
    """'bf16 (native)' / 'bf16 (emulated)' where the run knew; other dtypes as they are."""
    native = row.get("native_bf16")
    if row["dtype"] == "bf16" and row.get("compute_dtype") == "fp32":
        return "bf16 -> fp32 (no native bf16)"  # the models' upcast, diffae_core.runtime
    if row["dtype"] != "bf16" or native is None:
        return str(row["dtype"])
    return "bf16 (native)" if native else "bf16 (emulated)"


CASE_COLUMNS: list[Column] = [
    ("model", _text("model")),
    ("resolution", _side),
    ("batch", _text("batch")),
    ("dtype", _dtype),
    ("mode", _text("mode")),
]
TIMING_COLUMNS: list[Column] = [
    ("params (M)", _fixed("parameters", 1, 1e-6)),
    ("ms/batch", _fixed("ms_batch", 2)),
    ("ms/image", _fixed("ms_image", 3)),
    ("images/s", _fixed("images_per_s", 2)),
    ("peak MiB", _fixed("peak_mib", 1)),
]
FLOP_COLUMNS: list[Column] = [
    ("GFLOP", _fixed("flops", 1, 1e-9)),
    ("TFLOP/s", _fixed("tflops", 3)),
    ("% of fastest GEMM measured", _fixed("gemm_fraction", 1, 100.0, "%")),
]
RATIO_COLUMNS: list[Column] = [
    ("speedup vs FLUX.2", _fixed("speedup_vs_flux2", 2, suffix="x")),
    ("peak memory reduction vs FLUX.2", _fixed("peak_reduction_vs_flux2", 1, 100.0, "%")),
]
CARD_COLUMNS: list[Column] = [
    ("model", _text("model")),
    ("task", _text("task")),
    ("resolution", _side),
    ("dtype", _dtype),
    ("mode", _text("mode")),
    *RATIO_COLUMNS,
    ("model ms/image", _fixed("ms_image", 2)),
    ("FLUX.2 ms/image", _fixed("flux2_ms_image", 2)),
    ("model peak MiB", _fixed("peak_mib", 1)),
    ("FLUX.2 peak MiB", _fixed("flux2_peak_mib", 1)),
]


def table(columns: list[Column], rows: list[Row]) -> str:
    """A Markdown table with one line per row."""
    return markdown_table([name for name, _ in columns], [[f(r) for _, f in columns] for r in rows])


def render_speed_page(
    machine: str, info: dict[str, Any], settings: dict[str, Any], rows: list[Row]
) -> str:
    """The whole results page as Markdown."""
    on_gpu = info["device"].startswith("cuda")
    memory = "peak allocated growth" if on_gpu else "peak resident-set (RSS) growth"
    gemm = [[dtype, f"{tflops:.3f}"] for dtype, tflops in settings["gemm_tflops"].items()]
    lines = [f"# Speed on {machine}", "", *header_lines(info), ""]
    lines += [f"- {key}: `{value}`" for key, value in settings.items() if key != "gemm_tflops"]
    lines += [f"- peak MiB: the model's weights and buffers + the call's {memory}"]
    lines += ["", markdown_table(["dtype", "fastest GEMM measured (TFLOP/s)"], gemm)]
    for row in rows:
        row.setdefault("native_bf16", info.get("native_bf16"))
    encode_rows = [r for r in rows if r["task"] == "encode"]
    decode_rows = [r for r in rows if r["task"] == "decode"]
    if encode_rows:
        columns = CASE_COLUMNS + TIMING_COLUMNS + FLOP_COLUMNS + RATIO_COLUMNS
        lines += ["", "## Encode throughput", "", table(columns, encode_rows)]
    if decode_rows:
        columns = CASE_COLUMNS + TIMING_COLUMNS + FLOP_COLUMNS + RATIO_COLUMNS
        lines += ["", "## Decode latency (1 step, PDG off)", "", table(columns, decode_rows)]
    moded = [r for r in rows if r.get("time_vs_eager") is not None]
    if moded:
        columns = [
            *CASE_COLUMNS,
            ("ms/batch", _fixed("ms_batch", 1)),
            ("time / eager", _fixed("time_vs_eager", 2)),
            ("peak growth MiB", _fixed("peak_growth_mib", 1)),
            ("peak growth / eager", _fixed("peak_growth_vs_eager", 2)),
        ]
        lines += ["", "## Compiled and tiled against eager", "", table(columns, moded)]
    compared = [r for r in rows if r["model"] != FLUX2_NAME and r["speedup_vs_flux2"] is not None]
    if compared:
        lines += ["", "## Speedup vs FLUX.2 (as on the cards)", "", table(CARD_COLUMNS, compared)]
    return "\n".join(lines) + "\n"
