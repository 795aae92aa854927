"""Settings: frozen dataclasses, profiles, TOML files and validation.

Precedence, lowest first: built-in defaults, the profile's defaults, `[tool.reportgen]` in the
working directory's pyproject.toml, `reportgen.toml` in the model's folder, the `--config` file,
and command-line flags. The model folder convention fills `checkpoint`, `classes` and `images`
from `checkpoint/`, `classes.txt` and `probe/` beside the model file when nothing else set them.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reportgen.analyses.featurevis import OBJECTIVES, PARAMETERISATIONS
from reportgen.analyses.saliency import IG_BASELINES, IG_RULES
from reportgen.errors import UserError

PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "quick": {
        "layers": {"activation_images": 2, "channel_images": 6, "channels_across": 8, "conductance_steps": 0},
        "attribution": {
            "images": 8,
            "sanity_images": 2,
            "smoothgrad_samples": 8,
            "ig_steps": 16,
            "infidelity_samples": 16,
            "sensitivity_samples": 2,
        },
        "visualisation": {"filters": 8, "steps": 32, "class_steps": 48},
    },
    "standard": {
        "layers": {"activation_images": 4, "channel_images": 10, "channels_across": 16, "conductance_steps": 16},
        "attribution": {
            "images": 43,
            "sanity_images": 4,
            "smoothgrad_samples": 16,
            "ig_steps": 32,
            "infidelity_samples": 32,
            "sensitivity_samples": 4,
        },
        "visualisation": {"filters": 0, "steps": 64, "class_steps": 128},
    },
    "full": {
        "layers": {"activation_images": 0, "channel_images": 0, "channels_across": 0, "conductance_steps": 32},
        "attribution": {
            "images": 0,
            "sanity_images": 8,
            "smoothgrad_samples": 32,
            "ig_steps": 64,
            "infidelity_samples": 64,
            "sensitivity_samples": 8,
        },
        "visualisation": {"filters": 0, "steps": 256, "class_steps": 256},
    },
}
"""Per-profile defaults of the stage settings; 0 means "all"."""


@dataclass(frozen=True)
class Preprocess:
    """Maps images read in [0, 1] into the model's input space: (x * scale - mean) / std."""

    scale: float = 1.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


@dataclass(frozen=True)
class LayerSettings:
    """The layer sections (TOML table [layers])."""

    activation_images: int = 4  # probe images whose every channel is shown per layer (0: all)
    channel_images: int = 10  # probe images shown for each channel across images (0: all)
    channels_across: int = 16  # channels shown across images per layer (0: all)
    rare_fraction: float = 0.05  # a filter firing on fewer probe images than this is "rare"
    top_patches: int = 4  # strongest probe patches shown per filter and concept
    concepts: int = 8  # most concepts per layer, k chosen by reconstruction error (0: none)
    conductance_steps: int = 16  # path steps of each filter's conductance for its class (0: none)


@dataclass(frozen=True)
class AttributionSettings:
    """The Attribution section (TOML table [attribution])."""

    images: int = 43  # probe images explained by every method (0: all)
    target: str = "predicted"  # "predicted", "label" or a class index
    sanity_images: int = 4  # images of the cascading randomisation check
    sanity_stages: int = 0  # randomisation stages, consecutive layers grouped top down (0: one per layer)
    sanity_threshold: float = 0.5  # flag a method whose maps keep this rank correlation
    class_threshold: float = 0.9  # flag a method whose map for a random other class is this alike (both measures)
    smoothgrad_samples: int = 16
    smoothgrad_noise: float = 0.15  # noise std as a fraction of the image's value range
    ig_steps: int = 32
    ig_baseline: str = "black"  # "black", "blurred" or "uniform"
    ig_rule: str = "gauss-legendre"  # "riemann", "trapezoid" or "gauss-legendre"
    occlusion_window: int = 8
    occlusion_stride: int = 4
    faithfulness_steps: int = 16
    infidelity_samples: int = 32  # random square removals of the infidelity score
    sensitivity_samples: int = 4  # perturbed copies per sanity image for max-sensitivity (0: none)


@dataclass(frozen=True)
class VisualisationSettings:
    """Feature and class visualisation (TOML table [visualisation])."""

    filters: int = 0  # filters visualised per conv layer, the most active first (0: all)
    steps: int = 64
    learning_rate: float = 0.2
    parameterisation: str = "fourier"  # "fourier" (decorrelated colour) or "pixels"
    objective: str = "channel_mean"  # or "centre"
    jitter: int = 2
    rotation: float = 5.0
    tv: float = 0.1
    l2: float = 0.0
    blur: float = 0.0
    images_per_filter: int = 1
    diversity: float = 0.0
    classes: int = 0  # classes visualised, the most often predicted first (0: all)
    class_steps: int = 128
    class_learning_rate: float = 0.05
    class_tv: float = 0.05


@dataclass(frozen=True)
class Settings:
    """Every effective setting of one build; recorded in the report."""

    model: str
    checkpoint: str
    out: str = "reports/latest"
    step: int | None = None
    images: str | None = None
    classes: str | None = None
    input_shape: tuple[int, int, int] | None = None
    profile: str = "standard"
    seed: int = 0
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    apply_kwargs: Mapping[str, Any] = field(default_factory=dict)
    preprocess: Preprocess = Preprocess()
    memory_budget: float = 0.0  # GiB the computation may hold at once (0: a safe share of free memory)
    time_budget: float = 0.0  # seconds the build may take (0: the profile's; inf: no limit)
    size_budget_mb: float = 25.0
    external_figures: bool = False  # link figures/*.png instead of embedding them
    resize: str = "crop"  # probe images of another size: "crop", "pad" or "stretch"
    redact: bool = False  # leave absolute paths, user and host names out of the outputs
    outputs: str = "auto"  # what the model returns: "logits", "probabilities" or "auto" (detected)
    layers: LayerSettings = LayerSettings()
    attribution: AttributionSettings = AttributionSettings()
    visualisation: VisualisationSettings = VisualisationSettings()


SECTIONS: dict[str, type] = {
    "layers": LayerSettings,
    "attribution": AttributionSettings,
    "visualisation": VisualisationSettings,
}
"""The TOML tables of the stage settings."""

FIELDS = {f.name: f for f in dataclasses.fields(Settings) if f.name not in SECTIONS}
SECTION_FIELDS = {section: {f.name: f for f in dataclasses.fields(kind)} for section, kind in SECTIONS.items()}
MOVED = {
    **{name: ("layers", name) for name in SECTION_FIELDS["layers"]},
    **{f"attribution_{name}": ("attribution", name) for name in ("images", "target")},
    **{name: ("attribution", name) for name in SECTION_FIELDS["attribution"] if name not in ("images", "target")},
    **{f"vis_{name}": ("visualisation", name) for name in SECTION_FIELDS["visualisation"]},
    **{name: ("visualisation", name) for name in SECTION_FIELDS["visualisation"] if name.startswith("class_")},
}
"""Flat setting names of earlier versions -> their table and name now (for the error message)."""

AT_LEAST_ONE = frozenset(
    {
        "attribution.sanity_images",
        "attribution.smoothgrad_samples",
        "attribution.occlusion_window",
        "attribution.occlusion_stride",
        "attribution.faithfulness_steps",
        "attribution.infidelity_samples",
        "visualisation.steps",
        "visualisation.images_per_filter",
        "visualisation.class_steps",
    }
)
"""Integer settings for which 0 makes no sense (elsewhere 0 means "all")."""


def read_toml(path: Path, table: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings table of a TOML file (`table` is the key path, e.g. tool.reportgen)."""
    try:
        data: Any = tomllib.loads(path.read_text())
    except FileNotFoundError as e:
        raise UserError(f"config file {path} does not exist") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"config file {path} is not valid TOML: {e}") from e
    for key in table:
        data = data.get(key, {}) if isinstance(data, dict) else {}
    _check_names(data, path)
    base = path.parent
    for key in ("checkpoint", "images", "classes", "out"):
        if isinstance(data.get(key), str):
            data[key] = str(base / data[key])
    if isinstance(data.get("model"), str) and ".py:" in data["model"]:
        data["model"] = str(base / data["model"])
    return dict(data)


def _check_names(data: Mapping[str, Any], path: Path | str) -> None:
    """Unknown settings and tables are one line naming the valid ones (or where a setting moved)."""
    for name, value in data.items():
        if name in SECTIONS:
            if not isinstance(value, Mapping):
                raise UserError(f"[{name}] in {path} must be a table of settings")
            unknown = sorted(set(value) - set(SECTION_FIELDS[name]))
            if unknown:
                valid = ", ".join(SECTION_FIELDS[name])
                raise UserError(f"unknown setting {unknown[0]!r} in [{name}] of {path}; valid: {valid}")
        elif name in MOVED:
            table, new = MOVED[name]
            raise UserError(f"setting {name!r} in {path} is now {new!r} in the [{table}] table")
        elif name not in FIELDS:
            valid = ", ".join([*FIELDS, *(f"[{t}]" for t in SECTIONS)])
            raise UserError(f"unknown setting {name!r} in {path}; valid settings: {valid}")


def _model_folder(model: str) -> Path | None:
    file, sep, _ = model.rpartition(":")
    return Path(file).parent if sep and file.endswith(".py") else None


def _coerce(name: str, value: Any, kind: str | None = None) -> Any:
    """Check and convert one raw setting value (`name` is qualified for stage settings, e.g.
    attribution.ig_steps; `kind` is its annotation)."""
    if name == "input_shape" and value is not None:
        if isinstance(value, str):
            value = value.split(",")
        try:
            shape = tuple(int(v) for v in value)
        except (TypeError, ValueError) as e:
            raise UserError(f"input_shape {value!r} is not H,W,C") from e
        if len(shape) != 3 or min(shape) < 1:
            raise UserError(f"input_shape {value!r} is not H,W,C with positive sizes")
        return shape
    if name == "preprocess":
        if isinstance(value, Preprocess):
            return value
        if not isinstance(value, Mapping) or set(value) - {"scale", "mean", "std"}:
            raise UserError("preprocess must be a table with scale, mean and std")
        mean = value.get("mean", 0.0)
        std = value.get("std", 1.0)
        pre = Preprocess(
            float(value.get("scale", 1.0)),
            tuple(float(v) for v in (mean if isinstance(mean, list) else [mean])),
            tuple(float(v) for v in (std if isinstance(std, list) else [std])),
        )
        if any(s == 0 for s in pre.std) or pre.scale == 0:
            raise UserError("preprocess std and scale must be non-zero")
        return pre
    if name == "profile" and (not isinstance(value, str) or value not in PROFILES):
        raise UserError(f"profile {value!r} is unknown; choose one of {', '.join(PROFILES)}")
    if name in ("model_kwargs", "apply_kwargs"):
        if not isinstance(value, Mapping):
            raise UserError(f"{name} must be a table of keyword arguments")
        return dict(value)
    kind = kind if kind is not None else str(FIELDS[name].type)
    if kind == "bool" and not isinstance(value, bool):
        raise UserError(f"{name} must be true or false, not {value!r}")
    if kind in ("int", "int | None") and value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"{name} must be a non-negative integer, not {value!r}")
        if name in AT_LEAST_ONE and value == 0:
            raise UserError(f"{name} must be at least 1")
    if name == "attribution.ig_steps" and value < 2:
        raise UserError("attribution.ig_steps must be at least 2")
    choices = {
        "resize": ("crop", "pad", "stretch"),
        "outputs": ("auto", "logits", "probabilities"),
        "attribution.ig_baseline": IG_BASELINES,
        "attribution.ig_rule": IG_RULES,
        "visualisation.parameterisation": PARAMETERISATIONS,
        "visualisation.objective": OBJECTIVES,
    }
    if name in choices and value not in choices[name]:
        raise UserError(f"{name} {value!r} is unknown; choose one of {', '.join(choices[name])}")
    if name == "attribution.target":
        if value not in ("predicted", "label") and not str(value).isdigit():
            raise UserError(f"attribution.target {value!r} must be 'predicted', 'label' or a class index")
        return str(value)
    if kind == "float":
        try:
            value = float(value)
        except (TypeError, ValueError) as e:
            raise UserError(f"{name} must be a number, not {value!r}") from e
        if not value >= 0:
            raise UserError(f"{name} must not be negative")
        if math.isinf(value) and name != "time_budget":
            raise UserError(f"{name} must be a finite number, not {value}")
    return value


def resolve(flags: Mapping[str, Any], config_file: str | None = None, cwd: Path | None = None) -> Settings:
    """Merge every source of settings and validate them; raises UserError."""
    cwd = cwd or Path.cwd()
    raw: dict[str, Any] = {}
    pyproject = cwd / "pyproject.toml"
    if pyproject.is_file():
        _merge(raw, read_toml(pyproject, ("tool", "reportgen")))
    model = flags.get("model") or raw.get("model")
    folder = _model_folder(model) if model else None
    if folder is not None and (folder / "reportgen.toml").is_file():
        _merge(raw, read_toml(folder / "reportgen.toml"))
    if config_file:
        _merge(raw, read_toml(Path(config_file)))
    given = {k: v for k, v in flags.items() if v is not None}
    _check_names(given, "the arguments")
    _merge(raw, given)
    model = raw.get("model")
    if not model:
        raise UserError("no model given; pass --model path/to/file.py:NAME")
    folder = _model_folder(model)
    if folder is not None:
        for key, name in (("checkpoint", "checkpoint"), ("classes", "classes.txt"), ("images", "probe")):
            if raw.get(key) is None and (folder / name).exists():
                raw[key] = str(folder / name)
    if not raw.get("checkpoint"):
        raise UserError("no checkpoint given; pass --checkpoint DIR (an orbax checkpoint)")
    profile = _coerce("profile", raw.get("profile", "standard"))
    stages = {}
    for section, kind in SECTIONS.items():
        given = {**PROFILES[profile][section], **raw.pop(section, {})}
        types = SECTION_FIELDS[section]
        stages[section] = kind(**{k: _coerce(f"{section}.{k}", v, str(types[k].type)) for k, v in given.items()})
    values = {**raw, "profile": profile}
    return Settings(**{k: _coerce(k, v) for k, v in values.items()}, **stages)


def _merge(into: dict[str, Any], more: Mapping[str, Any]) -> None:
    """Later sources win, setting by setting, also inside the stage tables."""
    for key, value in more.items():
        if key in SECTIONS and isinstance(value, Mapping):
            into[key] = {**into.get(key, {}), **value}
        else:
            into[key] = value


def as_dict(settings: Settings) -> dict[str, Any]:
    """Plain JSON-ready view of the settings, stage tables nested."""
    return dataclasses.asdict(settings)
