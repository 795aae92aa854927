"""Everything a report knows, as frozen dataclasses: the content of report.json.

The stages produce these; findings, summary.md and `reportgen diff` read nothing else. report.json
is `to_json(Report)`, and `load` reads one back (no model needed). The JSON Schema shipped in
`reportgen/schema/` is generated from these classes (`python -m reportgen.results`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from reportgen import serial
from reportgen.errors import UserError

SCHEMA_VERSION = 2
SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / f"report-v{SCHEMA_VERSION}.json"
MAP_SIDE = 32
"""Attribution maps are stored at most MAP_SIDE × MAP_SIDE, as 8-bit levels of |map| / max |map|."""

Severity = Literal["error", "warning", "info"]


@dataclass(frozen=True)
class ReceptiveField:
    """Input pixels one output position sees, and the step between neighbouring positions."""

    size: tuple[int, int]
    stride: tuple[int, int]


@dataclass(frozen=True)
class ChannelStatistics:
    """Per-channel activation statistics over the probe set (null where not finite)."""

    mean: tuple[float | None, ...]
    max: tuple[float | None, ...]
    firing_fraction: tuple[float | None, ...]
    nonnegative: bool
    nonfinite_images: int


@dataclass(frozen=True)
class TopPatches:
    """Per visualised filter, its strongest probe images (indices into predictions.images) and where."""

    images: tuple[tuple[int, ...], ...]
    rows: tuple[tuple[int, ...], ...]
    cols: tuple[tuple[int, ...], ...]
    values: tuple[tuple[float | None, ...], ...]


@dataclass(frozen=True)
class FeatureVisualisation:
    """Activation maximisation of a layer's filters, compared with the best probe image."""

    selection: str
    filters: tuple[int, ...]
    activation: tuple[float | None, ...]
    probe_best: tuple[float | None, ...]
    beats_probes: tuple[bool, ...]
    beat_fraction: float | None
    dead: tuple[bool, ...]
    top_patches: TopPatches


@dataclass(frozen=True)
class ConceptClass:
    """A class a concept gives evidence for."""

    name: str
    index: int
    share: float  # of the class's positive concept evidence at the layer
    contribution: float  # mean Σ coefficient × (concept · d logit / d activation) over the class's images


@dataclass(frozen=True)
class Concept:
    """One non-negative factor of a layer's activations: a mix of filters, where it is strongest
    and which classes it serves."""

    presence: float  # share of the layer's reconstructed activation it carries
    filters: tuple[int, ...]  # its strongest filters, largest weight first
    weights: tuple[float, ...]  # their weights in the concept's unit-length direction
    top_patches: TopPatches  # one row: the probe images where its coefficient peaks, and where
    classes: tuple[ConceptClass, ...]  # the classes it gives the largest share of their evidence


@dataclass(frozen=True)
class Concepts:
    """A layer's concepts (Deep Feature Factorization), k chosen by reconstruction error."""

    fitted_rows: int  # activation vectors of probe images the factorisation was fitted on
    errors: tuple[float | None, ...]  # relative reconstruction error with 1, 2, … concepts
    gain: float  # k is the smallest count that one more concept would improve by less than this error
    concepts: tuple[Concept, ...]
    evidence: float | None = None  # mean per probe image of the concepts' evidence for its class
    layer_evidence: float | None = None  # the same of all filters (Σ activation × gradient), which includes it


@dataclass(frozen=True)
class LayerResult:
    """One layer: facts, activation statistics, dead and rare filters, feature visualisation."""

    name: str
    section: str
    kind: str
    activation: str | None
    unit: str
    output_shape: tuple[int, ...]
    params: int
    flops: int
    receptive_field: ReceptiveField | None
    statistics: ChannelStatistics
    dead_filters: tuple[int, ...]
    rare_filters: tuple[int, ...]
    nonfinite_weights: tuple[int, ...]  # channels whose weights hold NaN or infinity
    feature_visualisation: FeatureVisualisation | None
    concepts: Concepts | None = None


@dataclass(frozen=True)
class ClassScore:
    """A class and its probability."""

    name: str
    index: int
    probability: float | None


@dataclass(frozen=True)
class ImagePrediction:
    """One probe image: its content hash, label and top-5."""

    name: str
    sha256: str
    label: str | None
    label_index: int | None
    top: tuple[ClassScore, ...]
    correct: bool | None


@dataclass(frozen=True)
class Predictions:
    """The model's predictions on the probe set."""

    accuracy: float | None
    labelled_images: int
    nonfinite_logits: int
    outputs_are_probabilities: bool  # the model returns probabilities (not softmaxed again)
    images: tuple[ImagePrediction, ...]
    confusion: tuple[tuple[int, ...], ...] | None


@dataclass(frozen=True)
class MethodScores:
    """One attribution method's faithfulness and sanity scores, averaged over the explained images."""

    name: str
    title: str
    signed: bool
    deletion_auc: float | None
    insertion_auc: float | None
    deletion_curve: tuple[float | None, ...]
    insertion_curve: tuple[float | None, ...]
    sanity_spearman: tuple[float | None, ...]  # of absolute values, per cascade stage
    sanity_head: float | None  # after randomising the classifier head and the last convolution
    sanity_final: float | None  # after randomising every layer
    flagged: bool  # the maps survive randomising the head, or every layer
    sanity_ssim: tuple[float | None, ...] = ()  # per cascade stage
    class_spearman: float | None = None  # map for the explained class against a random other class's
    class_ssim: float | None = None
    class_insensitive: bool = False  # the two maps are alike (Spearman and SSIM above the class threshold)
    independent_spearman: tuple[float | None, ...] = ()  # per stage, only that stage's layers randomised
    independent_ssim: tuple[float | None, ...] = ()
    road_morf: float | None = None  # ROAD: mean class probability, most relevant pixels imputed first (lower is better)
    road_lerf: float | None = None  # least relevant first (higher is better)
    road_morf_curve: tuple[float | None, ...] = ()  # at each of road.FRACTIONS
    road_lerf_curve: tuple[float | None, ...] = ()
    infidelity: float | None = None  # relative, under random square removals (0 best, 1 predicts nothing)
    max_sensitivity: float | None = None  # largest relative change of the map under tiny input noise


@dataclass(frozen=True)
class BaselineScores:
    """A reference map's faithfulness (random, centre or edge; `faithfulness.BASELINES`), averaged
    over the explained images: what an attribution method has to beat."""

    name: str
    title: str
    deletion_auc: float | None
    insertion_auc: float | None
    deletion_curve: tuple[float | None, ...]
    insertion_curve: tuple[float | None, ...]
    road_morf: float | None = None
    road_lerf: float | None = None
    road_morf_curve: tuple[float | None, ...] = ()
    road_lerf_curve: tuple[float | None, ...] = ()
    infidelity: float | None = None


def auc_gap(scores: MethodScores | BaselineScores) -> float | None:
    """Insertion AUC minus deletion AUC: how well a map orders pixels by their effect on the
    class probability, in one number (higher is better)."""
    if scores.insertion_auc is None or scores.deletion_auc is None:
        return None
    return scores.insertion_auc - scores.deletion_auc


@dataclass(frozen=True)
class StoredMap:
    """An attribution map, average-pooled to at most MAP_SIDE per side, as base64 8-bit levels of
    |map| / max |map| (enough for rank correlations between releases)."""

    shape: tuple[int, int]
    levels: str

    def array(self) -> np.ndarray:
        """The levels as a float array in [0, 1]."""
        raw = np.frombuffer(base64.b64decode(self.levels), np.uint8)
        return raw.reshape(self.shape).astype(np.float32) / 255.0


@dataclass(frozen=True)
class ExplainedImage:
    """One explained probe image: the class explained, per-method AUCs and maps."""

    name: str
    sha256: str
    target: str
    target_index: int
    deletion_auc: dict[str, float | None]
    insertion_auc: dict[str, float | None]
    maps: dict[str, StoredMap]
    ig_completeness_error: float | None = None  # |Σ IG map − (f(x) − f(x′))| / |f(x) − f(x′)|


@dataclass(frozen=True)
class Attribution:
    """Every attribution method's scores and the explained images."""

    cam_layer: str
    methods: tuple[MethodScores, ...]
    images: tuple[ExplainedImage, ...]
    sanity_stages: tuple[str, ...]
    head_stage: int  # index into sanity_stages: the head and the last convolution are randomised
    sanity_images: int
    sanity_threshold: float
    baselines: tuple[BaselineScores, ...] = ()
    class_threshold: float | None = None  # Spearman and SSIM above which a method is class-insensitive
    road_fractions: tuple[float, ...] = ()  # shares of the pixels imputed at the ROAD curves' points


@dataclass(frozen=True)
class ClassImage:
    """A class visualisation and the logit it reaches."""

    name: str
    index: int
    logit: float | None


@dataclass(frozen=True)
class DecidingFilter:
    """One filter's part in a class's logit at one layer (`analyses/classfilters.py`)."""

    layer: str
    filter: int
    contribution: float  # mean Σ activation × d logit / d activation over the class's probe images
    share: float  # of the class's total positive contribution at this layer
    gradcam_weight: float  # mean d logit / d activation (Grad-CAM's channel weight)
    conductance: float | None = None  # mean conductance from a black image (None: not computed)
    conductance_share: float | None = None  # of the class's total positive conductance at this layer


@dataclass(frozen=True)
class ClassEvidence:
    """The filters each conv layer gives a class's logit the most evidence through."""

    name: str
    index: int
    images: int  # probe images of the class the contributions are averaged over
    filters: tuple[DecidingFilter, ...]  # the top filters of every visualised layer, largest first per layer


@dataclass(frozen=True)
class Finding:
    """One alert: what it is about (`code` and `subject` identify it across releases) and where the
    report shows it."""

    severity: Severity
    code: str
    subject: str
    message: str
    section: str


@dataclass(frozen=True)
class Checkpoint:
    """Where the weights came from and their hash."""

    path: str
    step: int | None
    sha256: str
    files: int
    bytes: int


@dataclass(frozen=True)
class Model:
    """The model: spec, class, shapes, parameters and checkpoint."""

    spec: str
    api: str
    class_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    params: int
    checkpoint: Checkpoint
    classes: tuple[str, ...]


@dataclass(frozen=True)
class PlanStage:
    """One stage's batching and estimates, and what it measured (null when not recorded)."""

    name: str
    chunk: int
    inner_batch: int
    gflops: float | None
    estimated_seconds: float | None
    estimated_bytes: int
    measured_seconds: float | None
    measured_peak_bytes: int | None
    gflops_per_second: float | None
    compile_seconds: float | None


SAMPLED_SETTINGS = (
    "visualisation.filters",
    "visualisation.classes",
    "attribution.sanity_stages",
    "attribution.images",
    "attribution.sanity_images",
)
"""The settings a profile's time budget may lower ("table.name"; `PlanRecord.sampled` says which
it did); all but the sanity images count everything with 0."""


@dataclass(frozen=True)
class PlanRecord:
    """The build plan: budgets, what was sampled, and per-stage figures (machine-dependent figures
    are left out of reproducible builds: `recorded` is false)."""

    recorded: bool
    sampled: tuple[str, ...]
    memory_budget_bytes: int | None
    gradient_passes: int | None
    forward_passes: int | None
    forward_gflops_per_second: float | None
    time_budget_seconds: float | None
    estimated_seconds: float | None
    stages: tuple[PlanStage, ...]
    gradient_gflops_per_second: float | None = None  # absent from reports written before it was measured
    visualisation_gflops_per_second: float | None = None  # gradient passes at feature visualisation's batch
    visualisation_step_ms: float | None = None  # an image's visualisation step besides the model


@dataclass(frozen=True)
class Provenance:
    """What is needed to rebuild the report, and what the build measured."""

    release: str | None
    versions: dict[str, str]
    python: str
    backend: str
    devices: tuple[str, ...]
    settings: dict[str, Any]
    seed: int
    command: str
    date: str
    probe_folder: str
    probe_images: int
    probe_warnings: tuple[str, ...]
    timings_recorded: bool
    timings: dict[str, float]
    plan: PlanRecord


@dataclass(frozen=True)
class Report:
    """Everything one report knows (report.json)."""

    schema_version: int
    model: Model
    layers: tuple[LayerResult, ...]
    predictions: Predictions
    attribution: Attribution
    class_visualisation: tuple[ClassImage, ...]
    findings: tuple[Finding, ...]
    provenance: Provenance
    class_evidence: tuple[ClassEvidence, ...] = ()

    def layer(self, name: str) -> LayerResult:
        """The layer called `name`."""
        return next(layer for layer in self.layers if layer.name == name)

    def with_findings(self, findings: tuple[Finding, ...]) -> Report:
        """The same report with its findings set."""
        return replace(self, findings=findings)


def image_hash(image: np.ndarray) -> str:
    """Content hash of a probe image as the model saw it (float32 pixels), to match images across
    releases whatever their file names."""
    return hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes()).hexdigest()


def stored_map(importance: np.ndarray) -> StoredMap:
    """Average-pool |map| to at most MAP_SIDE per side and quantise it to 8 bits."""
    magnitude = np.abs(np.nan_to_num(np.asarray(importance, np.float64)))
    h, w = magnitude.shape
    fh, fw = -(-h // MAP_SIDE), -(-w // MAP_SIDE)
    padded = np.pad(magnitude, ((0, -h % fh), (0, -w % fw)))
    pooled = padded.reshape(padded.shape[0] // fh, fh, padded.shape[1] // fw, fw).mean(axis=(1, 3))
    top = pooled.max()
    levels = np.zeros_like(pooled) if top <= 0 else np.round(pooled / top * 255)
    return StoredMap(pooled.shape, base64.b64encode(levels.astype(np.uint8).tobytes()).decode("ascii"))


def dumps(report: Report) -> str:
    """report.json text: sorted keys, no NaN, a final newline."""
    return json.dumps(serial.to_json(report), indent=1, sort_keys=True, allow_nan=False) + "\n"


def load(path: Path) -> Report:
    """A report from a report folder or a report.json file; UserError names what is wrong with it."""
    file = path / "report.json" if path.is_dir() else path
    if not file.is_file():
        raise UserError(f"{path} is not a report: no {file.name} there; pass a report folder or its report.json")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{file} is not valid JSON ({e}); rebuild the report") from e
    if not isinstance(data, dict) or "schema_version" not in data:
        raise UserError(f"{file} is not a reportgen report.json (no schema_version)")
    if data["schema_version"] != SCHEMA_VERSION:
        raise UserError(
            f"{file} has report schema version {data['schema_version']}, this reportgen reads version"
            f" {SCHEMA_VERSION}; rebuild that report with this version of reportgen"
        )
    try:
        return serial.from_json(Report, data)
    except serial.SchemaError as e:
        raise UserError(f"{file} does not match the report schema: {e}") from e


def schema() -> dict[str, Any]:
    """The JSON Schema of report.json."""
    return serial.json_schema(Report, f"urn:reportgen:report:{SCHEMA_VERSION}", "reportgen report.json")


if __name__ == "__main__":  # regenerate the shipped schema file
    SCHEMA_FILE.parent.mkdir(exist_ok=True)
    SCHEMA_FILE.write_text(json.dumps(schema(), indent=1, sort_keys=True) + "\n", encoding="utf-8")
    sys.stdout.write(f"wrote {SCHEMA_FILE}\n")
