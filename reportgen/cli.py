"""Command line: arguments only; the work happens in `reportgen.report`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from reportgen import __version__
from reportgen.config import PROFILES
from reportgen.errors import UserError
from reportgen.model.graph import Layer


class _Parser(argparse.ArgumentParser):
    """argparse that reports mistakes as one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Print the mistake as one line and exit with status 2."""
        sys.stderr.write(f"reportgen: error: {message}; see reportgen {self.prog.split()[-1]} --help\n")
        raise SystemExit(2)


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not H,W,C") from e
    if len(shape) != 3 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not H,W,C with positive sizes")
    return shape


def parser() -> argparse.ArgumentParser:
    """The reportgen argument parser."""
    top = _Parser(prog="reportgen", description="Explain a trained Flax CNN in one self-contained HTML report.")
    top.add_argument("--version", action="version", version=f"reportgen {__version__}")
    commands = top.add_subparsers(dest="command", required=True, parser_class=_Parser)
    build = commands.add_parser("build", help="build a report for a model and its orbax checkpoint")
    build.add_argument("--model", help="path/to/file.py:NAME or package.module:NAME (Linen or NNX module, or factory)")
    build.add_argument("--checkpoint", help="orbax checkpoint folder, or CheckpointManager root")
    build.add_argument("--step", type=int, help="step of a CheckpointManager root (default: latest)")
    build.add_argument("--images", help="folder of PNG/JPEG probe images; sub-folders named by class label them")
    build.add_argument("--classes", help="text file with one class name per line")
    build.add_argument(
        "--input-shape", type=_shape, help="model input H,W,C (default: from config or model.input_shape)"
    )
    build.add_argument("--config", help="TOML settings file")
    build.add_argument("--profile", choices=sorted(PROFILES), help="how much to compute and show (default: standard)")
    build.add_argument("--out", help="output folder (default: reports/latest)")
    build.add_argument("--seed", type=int, help="seed for every random choice (default: 0)")
    build.add_argument("--quiet", action="store_true", help="print nothing but errors")
    build.add_argument("--debug", action="store_true", help="show tracebacks")
    return top


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `reportgen` command; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return _build(args)
    except UserError as e:
        if args.debug:
            raise
        sys.stderr.write(f"reportgen: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("reportgen: interrupted; nothing was written\n")
        return 130


def layer_table(layers: Sequence[Layer]) -> str:
    """The layers as a fixed-width text table."""
    rows = [("layer", "kind", "output", "params", "FLOPs", "receptive field")]
    for layer in layers:
        rf = layer.receptive_field
        rows.append(
            (
                layer.name,
                layer.kind + (f"+{layer.activation}" if layer.activation else ""),
                "x".join(map(str, layer.output_shape)),
                f"{layer.params:,}",
                f"{layer.flops:,}",
                "whole input" if rf is None else f"{rf.size[0]}x{rf.size[1]} stride {rf.stride[0]}",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def _build(args: argparse.Namespace) -> int:
    from reportgen import config, report
    from reportgen.progress import Progress

    flags = {
        "model": args.model,
        "checkpoint": args.checkpoint,
        "step": args.step,
        "images": args.images,
        "classes": args.classes,
        "input_shape": args.input_shape,
        "profile": args.profile,
        "out": args.out,
        "seed": args.seed,
    }
    settings = config.resolve(flags, args.config)
    progress = Progress(quiet=args.quiet)
    result = report.build(settings, report.command_line(), progress)
    if not args.quiet:
        print(layer_table(result.layers))
        for warning in result.warnings:
            sys.stderr.write(f"reportgen: warning: {warning}\n")
        counts = {s: sum(f.severity == s for f in result.findings) for s in ("error", "warning", "info")}
        print(f"wrote {result.out / 'report.html'} ({result.html_bytes / 1e6:.1f} MB)")
        print(f"      {result.out / 'report.json'} and {result.figures} figures in {result.out / 'figures'}")
        print(f"findings: {counts['error']} errors, {counts['warning']} warnings, {counts['info']} notes")
    return 0
