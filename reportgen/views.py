"""View models: the strings and small records the templates show (no arrays, no arithmetic)."""

from __future__ import annotations

import re
from dataclasses import dataclass

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"


CSP_EXTERNAL = (
    "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)


def slug(text: str) -> str:
    """A lowercase id fragment."""
    return re.sub(r"[^0-9a-z]+", "-", text.lower()).strip("-") or "layer"


@dataclass(frozen=True)
class Fact:
    """A labelled value."""

    label: str
    value: str


@dataclass(frozen=True)
class FigureView:
    """An image in the report: a data URI or a relative file path."""

    src: str
    alt: str
    caption: str


@dataclass(frozen=True)
class FindingView:
    """One finding with a link to its section."""

    severity: str
    message: str
    href: str


@dataclass(frozen=True)
class ArchitectureRow:
    """One row of the architecture table."""

    href: str
    name: str
    kind: str
    shape: str
    params: str
    flops: str
    receptive_field: str


@dataclass(frozen=True)
class Guess:
    """A class with its probability."""

    name: str
    probability: str


@dataclass(frozen=True)
class PredictionView:
    """One probe image with its top classes."""

    image: FigureView
    name: str
    label: str
    verdict: str  # "correct", "wrong" or "" without a label
    top: tuple[Guess, ...]


@dataclass(frozen=True)
class FilterRow:
    """Statistics of one filter."""

    index: str
    mean: str
    firing: str
    maximum: str
    status: str


@dataclass(frozen=True)
class FilterCard:
    """A filter's synthesised image and its top activating probe patches."""

    image: FigureView
    patches: tuple[FigureView, ...]
    caption: str
    status: str  # "dead", "beats" (beats every probe image) or ""
    id: str = ""  # its anchor, which the class evidence links to


@dataclass(frozen=True)
class ClassCard:
    """What one class looks like to the model, beside a real example."""

    name: str
    image: FigureView
    example: FigureView | None
    caption: str


@dataclass(frozen=True)
class EvidenceTile:
    """One filter a class relies on: what it responds to, its share, and where its layer is."""

    image: FigureView  # its synthesised image, or the class patch where it was not visualised
    patch: FigureView | None  # where it fires most in the class's probe images, beside the synthesised image
    label: str  # "conv6 #42"
    share: str  # "31 %"
    href: str  # the layer section
    conductance: str = ""  # its share of the class's conductance, "" where not computed


@dataclass(frozen=True)
class ClassEvidenceRow:
    """The filters one class relies on, per layer shown."""

    name: str
    example: FigureView | None
    images: str  # "2 probe images"
    tiles: tuple[tuple[EvidenceTile, ...], ...]  # one group per layer shown


@dataclass(frozen=True)
class EvidenceSection:
    """Which filters decide each class: heatmaps per layer and one row per class."""

    note: str
    layers: tuple[str, ...]  # the layers whose filters the rows show
    heatmaps: tuple[FigureView, ...]
    rows: tuple[ClassEvidenceRow, ...]


@dataclass(frozen=True)
class ConceptCard:
    """One concept of a layer: where it is strongest, what it mixes and which classes it serves."""

    title: str  # "Concept 2 · 18 % of the activation"
    strip: FigureView  # its maps on its strongest probe images, and their patches
    filters: str  # "#12 (0.61), #7 (0.44)"
    classes: str  # "Stop 31 %, No entry 12 %"


@dataclass(frozen=True)
class LayerView:
    """One layer section."""

    id: str
    title: str
    kind: str
    facts: tuple[Fact, ...]
    figures: tuple[FigureView, ...]
    alerts: tuple[str, ...]
    filters: tuple[FilterRow, ...]
    vis_summary: str
    vis_cards: tuple[FilterCard, ...]
    concept_summary: str = ""
    concept_cards: tuple[ConceptCard, ...] = ()


@dataclass(frozen=True)
class MethodScore:
    """Faithfulness and sanity of one attribution method, or the faithfulness of a reference map."""

    rank: int
    title: str
    deletion: str
    insertion: str
    gap: str  # insertion minus deletion AUC, the ranking score
    road: str  # "MoRF / LeRF" mean class probability under ROAD
    infidelity: str
    beats: str  # the reference maps a method orders pixels better than ("" for a reference map)
    sanity_head: str  # "Spearman / SSIM" with the original maps, head randomised
    sanity: str  # the same, every layer randomised
    contrast: str  # "Spearman / SSIM" of the maps for the explained and a random other class
    sensitivity: str  # max-sensitivity under tiny input noise
    verdict: str  # "" or a warning
    reference: bool  # a reference map, not a method


@dataclass(frozen=True)
class AttributionRow:
    """One probe image with every method's map."""

    image: FigureView
    name: str
    target: str
    tiles: tuple[FigureView, ...]
    completeness: str  # Integrated Gradients' completeness error on this image


@dataclass(frozen=True)
class MethodAbout:
    """What a method reads and where it was published."""

    title: str
    needs: str
    reference: str


@dataclass(frozen=True)
class AttributionView:
    """The Attribution section."""

    methods: tuple[str, ...]
    about: tuple[MethodAbout, ...]
    rows: tuple[AttributionRow, ...]
    scores: tuple[MethodScore, ...]
    curves: FigureView
    sanity: FigureView
    notes: tuple[str, ...]


@dataclass(frozen=True)
class PlanRow:
    """One stage of the build plan as the Provenance table shows it."""

    stage: str
    batching: str
    estimated: str
    measured: str
    peak_memory: str
    throughput: str


@dataclass(frozen=True)
class ReportView:
    """Everything the report template shows."""

    title: str
    csp: str
    overview: tuple[Fact, ...]
    findings: tuple[FindingView, ...]
    architecture: tuple[ArchitectureRow, ...]
    accuracy: str
    predictions: tuple[PredictionView, ...]
    confusion: FigureView | None
    misclassified: tuple[PredictionView, ...]
    attribution: AttributionView
    layers: tuple[LayerView, ...]
    classes: tuple[ClassCard, ...]
    classes_note: str
    evidence: EvidenceSection
    provenance: tuple[Fact, ...]
    timings: tuple[Fact, ...]
    plan: tuple[PlanRow, ...]
    sampled: tuple[str, ...]
    settings_json: str


# ---------------------------------------------------------------------------------------------
# The comparison of two reports (reportgen diff)


@dataclass(frozen=True)
class Compared:
    """One quantity in both reports: cells as text, and how the change reads."""

    label: str
    old: str
    new: str
    change: str
    tone: str  # "better", "worse", "changed" or ""


@dataclass(frozen=True)
class ChangedPrediction:
    """A probe image whose top-1 class changed, with both thumbnails and both top-5s."""

    name: str
    label: str
    old_image: FigureView | None
    new_image: FigureView | None
    old_top: tuple[Guess, ...]
    new_top: tuple[Guess, ...]


@dataclass(frozen=True)
class LayerChangeRow:
    """One layer present in both reports."""

    name: str
    comparable: bool  # filters correspond one by one
    dead: Compared
    died: str
    revived: str
    mean_activation: Compared
    correlation: str
    firing: Compared
    vis: Compared


@dataclass(frozen=True)
class MethodChangeRow:
    """One attribution method in both reports."""

    title: str
    deletion: Compared
    insertion: Compared
    road: Compared  # ROAD, most relevant first
    infidelity: Compared
    sanity: Compared
    map_correlation: str
    verdict: str


@dataclass(frozen=True)
class DiffView:
    """The whole comparison page's view model."""

    title: str
    csp: str
    old_label: str
    new_label: str
    sides: tuple[Compared, ...]
    gates: tuple[Compared, ...]
    headline: tuple[Compared, ...]
    common_images: str
    classes: tuple[Compared, ...]
    classes_unchanged: int
    confusion: tuple[Compared, ...]
    predictions: tuple[ChangedPrediction, ...]
    layers: tuple[LayerChangeRow, ...]
    layers_only: tuple[str, ...]
    methods: tuple[MethodChangeRow, ...]
    introduced: tuple[FindingView, ...]
    resolved: tuple[FindingView, ...]
    changed: tuple[Compared, ...]
    provenance: tuple[Compared, ...]
    provenance_unchanged: int
    evidence: tuple[Compared, ...] = ()  # classes whose strongest filter at a layer changed
    evidence_note: str = ""
    sampling_note: str = ""  # what the two reports computed on different samples
