"""`--fail-on` rules: conditions on a report (build) or on a comparison (diff) that make the command
exit with status 1, one line per broken rule, so CI can stop a release.

A rule is `METRIC`, `METRIC<NUMBER` or `METRIC>NUMBER` (also `<=`, `>=`); a bare METRIC means
`METRIC>0`. `finding:SEVERITY` counts findings of that severity or worse.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from reportgen import findings as findings_module
from reportgen.diff import Diff
from reportgen.errors import UserError
from reportgen.results import Report


@dataclass(frozen=True)
class Metric:
    """A number a rule can test."""

    description: str
    needs_diff: bool
    needs_threshold: bool
    value: Callable[[Report, Diff | None], float | None]


def _worse_or_equal(severity: str) -> Callable[[Report, Diff | None], float]:
    limit = findings_module.SEVERITY_ORDER[severity]
    return lambda report, _: sum(findings_module.SEVERITY_ORDER[f.severity] <= limit for f in report.findings)


def _accuracy_drop(report: Report, diff: Diff | None) -> float | None:
    assert diff is not None
    row = diff.headline_value("probe accuracy")
    return None if row.old is None or row.new is None else row.old - row.new


def _lowest_map_correlation(report: Report, diff: Diff | None) -> float | None:
    assert diff is not None
    values = [m.map_correlation for m in diff.methods if m.map_correlation is not None]
    return min(values) if values else None


METRICS: dict[str, Metric] = {
    "accuracy": Metric("probe accuracy of the (new) report", False, True, lambda r, _: r.predictions.accuracy),
    "dead-filters": Metric(
        "dead filters over all layers", False, False, lambda r, _: sum(len(layer.dead_filters) for layer in r.layers)
    ),
    "sanity-failed": Metric(
        "attribution methods whose maps survive randomisation",
        False,
        False,
        lambda r, _: sum(m.flagged for m in r.attribution.methods),
    ),
    "finding:error": Metric("error findings", False, False, _worse_or_equal("error")),
    "finding:warning": Metric("warning or error findings", False, False, _worse_or_equal("warning")),
    "finding:info": Metric("findings of any severity", False, False, _worse_or_equal("info")),
    "accuracy-drop": Metric("old probe accuracy minus new", True, True, _accuracy_drop),
    "prediction-changes": Metric(
        "probe images (matched by content) whose top-1 class changed",
        True,
        False,
        lambda r, d: len(d.prediction_changes) if d else None,
    ),
    "new-dead-filters": Metric(
        "filters dead in the new report but not the old",
        True,
        False,
        lambda r, d: sum(layer.died_count for layer in d.layers) if d else None,
    ),
    "new-findings": Metric(
        "findings in the new report that the old did not have",
        True,
        False,
        lambda r, d: len(d.findings_introduced) if d else None,
    ),
    "map-correlation": Metric(
        "lowest mean rank correlation of a method's maps between the reports", True, True, _lowest_map_correlation
    ),
}
_RULE = re.compile(r"^(?P<metric>[a-z:-]+?)\s*(?:(?P<op><=|>=|<|>)\s*(?P<number>-?[0-9.]+(?:e-?[0-9]+)?))?$")
_OPS: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    ">=": lambda a, b: a >= b,
}


@dataclass(frozen=True)
class Rule:
    """A parsed `--fail-on` rule."""

    text: str
    metric: str
    op: str
    threshold: float


def parse(text: str, diff: bool) -> Rule:
    """A rule from its text; UserError for unknown metrics, bad syntax, or a diff-only rule on a build."""
    match = _RULE.match(text.strip())
    names = ", ".join(name for name, m in METRICS.items() if diff or not m.needs_diff)
    if match is None or match["metric"] not in METRICS:
        raise UserError(
            f"--fail-on {text!r} is not a rule; write METRIC, METRIC>N or METRIC<N with METRIC one of {names}"
        )
    metric = METRICS[match["metric"]]
    if metric.needs_diff and not diff:
        raise UserError(f"--fail-on {text!r} compares two reports; use it with reportgen diff (or --archive)")
    if match["op"] is None and metric.needs_threshold:
        raise UserError(f"--fail-on {text!r} needs a threshold, e.g. {match['metric']}<0.9 or {match['metric']}>0.01")
    try:
        threshold = float(match["number"]) if match["number"] is not None else 0.0
    except ValueError as e:
        raise UserError(f"--fail-on {text!r}: {match['number']!r} is not a number") from e
    return Rule(text.strip(), match["metric"], match["op"] or ">", threshold)


def parse_all(texts: Sequence[str], diff: bool) -> tuple[Rule, ...]:
    """Every rule, parsed before any work starts so a typo fails fast."""
    return tuple(parse(text, diff) for text in texts)


def evaluate(rule: Rule, report: Report, diff: Diff | None = None) -> tuple[bool, str]:
    """Whether the rule is broken, and the value measured. A rule that cannot be checked (e.g.
    accuracy without labels) counts as broken."""
    metric = METRICS[rule.metric]
    value = metric.value(report, diff)
    if value is None:
        return True, f"cannot be checked ({metric.description} is not available)"
    return _OPS[rule.op](value, rule.threshold), f"{metric.description} is {value:.4g}"


def broken(rules: Sequence[Rule], report: Report) -> list[str]:
    """One line per broken rule of one report (no diff): the rule and why."""
    results = [(rule, *evaluate(rule, report)) for rule in rules]
    return [f"{rule.text}: {why}" for rule, failed, why in results if failed]
