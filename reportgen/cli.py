"""Command line: arguments only; the work happens in `reportgen.report`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from reportgen import __version__, findings, gates
from reportgen.config import PROFILES
from reportgen.errors import UserError
from reportgen.model.graph import Layer

if TYPE_CHECKING:
    from reportgen import plan


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
    build.add_argument("--release", help="release name recorded in the report (with --archive: its folder name)")
    build.add_argument("--archive", help="release archive folder: writes ARCHIVE/RELEASE/, diffs and index.html")
    build.add_argument("--seed", type=int, help="seed for every random choice (default: 0)")
    build.add_argument(
        "--redact", action="store_true", default=None, help="leave absolute paths, user and host names out"
    )
    hosts = build.add_argument_group(
        "several hosts", "run the same command on every host; process 0 writes the report (see README, Scale)"
    )
    hosts.add_argument(
        "--distributed", action="store_true", help="join a multi-host run (detected from Slurm, Open MPI or a TPU pod)"
    )
    hosts.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0 (implies --distributed)")
    hosts.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (implies --distributed)")
    hosts.add_argument("--process-id", type=int, metavar="I", help="this process's index (implies --distributed)")
    _common(build)
    diff = commands.add_parser("diff", help="compare two reports (folders or report.json files)")
    diff.add_argument("old", help="the earlier report: a report folder or its report.json")
    diff.add_argument("new", help="the later report: a report folder or its report.json")
    diff.add_argument("--out", required=True, help="folder for diff.html, diff.json and summary.md")
    _common(diff)
    return top


def _common(command: argparse.ArgumentParser) -> None:
    rules = ", ".join(gates.METRICS)
    command.add_argument(
        "--fail-on",
        action="append",
        default=[],
        metavar="RULE",
        help=f"exit with status 1 when RULE holds, e.g. accuracy-drop>0.01 or finding:error; metrics: {rules}",
    )
    command.add_argument("--quiet", action="store_true", help="print nothing but errors")
    command.add_argument("--debug", action="store_true", help="show tracebacks")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `reportgen` command; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        return _build(args) if args.command == "build" else _diff(args)
    except UserError as e:
        if args.debug:
            raise
        sys.stderr.write(f"reportgen: error: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("reportgen: interrupted; nothing was written\n")
        return 130


def entry() -> None:
    """The `reportgen` command: run `main`, flush, and exit without interpreter finalisation.
    Native threads of the checkpoint and compiler libraries occasionally abort the process while
    Python tears it down ("FATAL: exception not rethrown", status 134, seen about one run in
    five after an early error); every output is written and flushed by then, so nothing is lost
    by leaving at once with the status `main` returned."""
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


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


def _gate_status(broken: Sequence[str]) -> int:
    for line in broken:
        sys.stderr.write(f"reportgen: gate broken: {line}\n")
    return 1 if broken else 0


def _diff(args: argparse.Namespace) -> int:
    from reportgen import compare

    rules = gates.parse_all(args.fail_on, diff=True)
    outcome = compare.write_diff(Path(args.old), Path(args.new), Path(args.out), rules)
    if not args.quiet:
        d = outcome.diff
        print(f"wrote {outcome.out / 'diff.html'}, diff.json and summary.md")
        print(
            f"{len(d.prediction_changes)} of {d.common_images} common probe images changed prediction;"
            f" {sum(layer.died_count for layer in d.layers)} filters died;"
            f" {len(d.findings_introduced)} findings introduced, {len(d.findings_resolved)} resolved"
        )
    return _gate_status(outcome.broken)


def _precedent(folder: Path, release: str) -> plan.Precedent | None:
    """The sampling of the archived release before `release`, which its build repeats so that the
    two compare (a `plan.Precedent`; None when that release sampled nothing, or there is none)."""
    from reportgen import archive, plan, results

    previous = archive.previous_release(folder, release)
    if previous is None:
        return None
    recorded = results.load(folder / previous).provenance
    return plan.Precedent.of(f"release {previous}", recorded.settings, recorded.plan.sampled)


def _join_hosts(args: argparse.Namespace) -> bool:
    """Join the multi-host run the arguments ask for; whether this process writes the report."""
    from reportgen import distributed

    explicit = (args.coordinator, args.num_processes, args.process_id)
    if not args.distributed and all(value is None for value in explicit):
        return True
    distributed.start(*explicit)
    return distributed.is_first()


def _build(args: argparse.Namespace) -> int:
    from reportgen import archive, config, report
    from reportgen.progress import Progress

    writes = _join_hosts(args)
    rules = gates.parse_all(args.fail_on, diff=args.archive is not None)
    if args.archive is not None:
        if args.release is None or args.out is not None:
            raise UserError("--archive needs --release NAME and no --out (the report goes to ARCHIVE/NAME)")
        archive.check_archive(Path(args.archive))
        args.out = str(Path(args.archive) / archive.check_release(args.release))

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
        "redact": args.redact,
    }
    settings = config.resolve(flags, args.config)
    progress = Progress(quiet=args.quiet or not writes)
    precedent = _precedent(Path(args.archive), args.release) if args.archive is not None else None
    result = report.build(settings, report.command_line(), progress, args.release, precedent)
    if result is None:  # another host's process: its share is computed, process 0 writes
        return 0
    broken = gates.broken([r for r in rules if not gates.METRICS[r.metric].needs_diff], result.report)
    if args.archive is not None:
        broken += archive.publish(Path(args.archive), args.release, rules)
    if not args.quiet:
        print(layer_table(result.layers))
        for warning in result.warnings:
            sys.stderr.write(f"reportgen: warning: {warning}\n")
        print(f"wrote {result.out / 'report.html'} ({result.html_bytes / 1e6:.1f} MB)")
        print(f"      report.json, summary.md and {result.figures} figures in {result.out / 'figures'}")
        print(f"findings: {findings.count_text(result.findings)}")
        if args.archive is not None:
            print(f"archive: {Path(args.archive) / 'index.html'}")
    return _gate_status(broken)
