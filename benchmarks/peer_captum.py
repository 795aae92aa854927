"""Peer benchmark: reportgen (JAX) against Captum (PyTorch) on the bundled demo model.

    .venv/bin/python benchmarks/peer_captum.py --repeats 3          # checks, then timing
    .venv/bin/python benchmarks/peer_captum.py --check-only         # agreement checks alone

What it measures. The demo `TrafficSignNet` (models/traffic_signs/model.py) is rebuilt in PyTorch
layer for layer and given the weights of the orbax checkpoint (conv kernels HWIO -> OIHW, dense
kernels (in, out) -> (out, in), and the NHWC flatten order kept by a permute before the dense
head). Both libraries then explain the same probe images for the same explicit targets (the class
the model predicts), with each method set up to compute the same quantity:

- saliency, guided backprop, gradient x input: signed input gradients (Captum `abs=False`);
- SmoothGrad, 25 samples, noise std 0.15 x each image's value range. Captum's `stdevs` is one
  number for the whole batch, so Captum is given each image divided by its range and a forward
  that multiplies it back: std 0.15 on that input is std 0.15 x range on the image, and the
  attribution is divided by the range afterwards. Only the random draws differ;
- Integrated Gradients, 50 steps, right Riemann sum, black (zero) baseline;
- occlusion, 8x8 window, stride 4, zero fill, the drop in the target class probability averaged
  over the windows covering each pixel (the last window is flush with the edge in both: 32 = 24 + 8);
- Grad-CAM at conv6 and at all six conv layers, at each layer's own resolution, ReLU applied. A
  reportgen conv layer's output is post-ReLU, so Captum hooks the ReLU module after each conv;
- all methods together: Captum runs every method above one after another; reportgen runs
  `api.attribute`, which shares work between methods.

Captum gets the fastest batching measured here: all IG steps of all images in one batch (its
default) and all 49 occlusion windows of an image in one evaluation.

Before timing, every method's maps are compared: the relative error max|captum - reportgen| /
max|reportgen| must stay below 1e-4 (SmoothGrad, whose noise differs, must instead correlate above
0.9 image by image); otherwise the script exits with status 1 and times nothing. One exception,
marked "ok*": where float32 rounding decides a discrete branch (a 2x2 max pool over nearly equal
values routes the gradient to a different pixel; the demo's flat-coloured signs have many such
near-ties, and IG's 50 path points meet some), the error can exceed 1e-4 between any two float32
runs. Then Captum is run again in float64 and the check passes if reportgen is no further from that
reference than Captum's own float32 result is (plus 1e-4). `--strict` turns this off.

How to read the table. Each time is the median of `--repeats` runs after one warm-up run (which
compiles reportgen's functions), reportgen and Captum runs alternating so that both see the same
machine load. The ratio is captum / reportgen: above 1 reportgen is faster, below 1 Captum is. The
machine is noisy and shared, so compare ratios between machines, not absolute times.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import captum
import jax
import numpy as np
import torch
from captum.attr import (
    GuidedBackprop,
    InputXGradient,
    IntegratedGradients,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "models" / "traffic_signs"
sys.path.insert(0, str(ROOT))

from reportgen import api  # noqa: E402
from reportgen.data import read_classes, read_probe  # noqa: E402

CONV_LAYERS = ["conv1", "conv2", "conv3", "conv4", "conv5", "conv6"]
# "All methods together": these, plus Grad-CAM at every conv layer.
ALL_METHODS = ["saliency", "guided_backprop", "gradient_x_input", "smoothgrad", "integrated_gradients", "occlusion"]
SMOOTHGRAD_SAMPLES = 25
SMOOTHGRAD_NOISE = 0.15
IG_STEPS = 50
WINDOW = 8
STRIDE = 4
TOLERANCE = 1e-4
MIN_CORRELATION = 0.9
# Captum's batching, the fastest measured on the 2-core CPU: every IG step of every image in one
# batch (Captum's default, None), and all 49 occlusion windows of an image in one evaluation.
IG_INTERNAL_BATCH: int | None = None
OCCLUSION_PERTURBATIONS_PER_EVAL = 49

Maps = np.ndarray | dict[str, np.ndarray]


class TorchTrafficSignNet(nn.Module):
    """PyTorch twin of the Flax `TrafficSignNet`, NCHW; dropout is left out (identity at inference)."""

    def __init__(self, num_classes: int = 43) -> None:
        super().__init__()
        channels = 3
        for block, features in enumerate((32, 64, 128), start=1):
            for index in (2 * block - 1, 2 * block):
                # Flax "SAME" padding of a 3x3 kernel at stride 1 is one pixel on every side.
                self.add_module(f"conv{index}", nn.Conv2d(channels, features, 3, padding=1))
                self.add_module(f"relu{index}", nn.ReLU())
                channels = features
            self.add_module(f"pool{block}", nn.MaxPool2d(2, 2))
        self.fc1 = nn.Linear(128 * 4 * 4, 256)
        self.relu_fc1 = nn.ReLU()
        self.logits = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, K) of NCHW images."""
        for block in (1, 2, 3):
            for index in (2 * block - 1, 2 * block):
                x = getattr(self, f"relu{index}")(getattr(self, f"conv{index}")(x))
            x = getattr(self, f"pool{block}")(x)
        x = x.permute(0, 2, 3, 1).flatten(1)  # Flax flattens NHWC
        return self.logits(self.relu_fc1(self.fc1(x)))

    def cam_module(self, layer: str) -> nn.Module:
        """The module whose output is reportgen's `layer` (a conv layer's output is post-ReLU)."""
        return getattr(self, layer.replace("conv", "relu"))


class Probabilities(nn.Module):
    """Softmax of a model's logits: occlusion measures the drop in class probability."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, K)."""
        return torch.softmax(self.model(x), dim=1)


class Rescaled(nn.Module):
    """`model(u * scale)`, so that noise of std s on u is noise of std s x scale on the image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, u: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Logits of the images u * scale, one scale per image."""
        return self.model(u * scale.view(-1, 1, 1, 1))


def torch_model(variables: Any) -> TorchTrafficSignNet:
    """The PyTorch twin with the restored Flax weights, in eval mode."""
    params = variables["params"]
    model = TorchTrafficSignNet(num_classes=int(np.shape(params["logits"]["bias"])[0]))
    state: dict[str, torch.Tensor] = {}
    for name, leaf in params.items():
        kernel = np.asarray(leaf["kernel"], np.float32)
        kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T  # HWIO -> OIHW; (in,out) -> (out,in)
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(kernel))
        state[f"{name}.bias"] = torch.from_numpy(np.array(leaf["bias"], np.float32))
    model.load_state_dict(state, strict=True)
    return model.eval()


def nchw(x: np.ndarray) -> torch.Tensor:
    """NHWC numpy images as an NCHW tensor."""
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def nhwc(t: torch.Tensor) -> np.ndarray:
    """An NCHW tensor as NHWC numpy."""
    return t.detach().permute(0, 2, 3, 1).numpy()


@dataclass
class Peers:
    """Both libraries set up on the same images and targets; every method returns numpy maps."""

    model: api.LoadedModel
    net: TorchTrafficSignNet
    images: np.ndarray
    targets: np.ndarray
    dtype: torch.dtype = torch.float32  # of the Captum inputs (net must match)

    def __post_init__(self) -> None:
        self.x = nchw(self.images).to(self.dtype)
        self.t = torch.from_numpy(self.targets.astype(np.int64))
        ranges = self.images.max(axis=(1, 2, 3)) - self.images.min(axis=(1, 2, 3))
        self.scale = torch.from_numpy(np.maximum(ranges, 1e-12)).to(self.dtype)

    # Captum ------------------------------------------------------------------------------------
    def captum_saliency(self) -> np.ndarray:
        """Signed input gradient."""
        return nhwc(Saliency(self.net).attribute(self.x, target=self.t, abs=False))

    def captum_guided_backprop(self) -> np.ndarray:
        """Guided backpropagation."""
        return nhwc(GuidedBackprop(self.net).attribute(self.x, target=self.t))

    def captum_gradient_x_input(self) -> np.ndarray:
        """Gradient times input."""
        return nhwc(InputXGradient(self.net).attribute(self.x, target=self.t))

    def captum_smoothgrad(self) -> np.ndarray:
        """SmoothGrad with noise std 0.15 x each image's value range (see the module docstring)."""
        tunnel = NoiseTunnel(Saliency(Rescaled(self.net)))
        scale = self.scale.view(-1, 1, 1, 1)
        grads = tunnel.attribute(
            self.x / scale,
            nt_type="smoothgrad",
            nt_samples=SMOOTHGRAD_SAMPLES,
            stdevs=SMOOTHGRAD_NOISE,
            target=self.t,
            abs=False,
            additional_forward_args=(self.scale,),
        )
        return nhwc(grads / scale)

    def captum_integrated_gradients(self) -> np.ndarray:
        """Integrated Gradients, right Riemann sum, zero baseline."""
        ig = IntegratedGradients(self.net)
        return nhwc(
            ig.attribute(
                self.x,
                baselines=torch.zeros_like(self.x),
                target=self.t,
                n_steps=IG_STEPS,
                method="riemann_right",
                internal_batch_size=IG_INTERNAL_BATCH,
            )
        )

    def captum_occlusion(self) -> np.ndarray:
        """Drop in target probability, averaged over the windows covering each pixel, (N, H, W)."""
        result = Occlusion(Probabilities(self.net)).attribute(
            self.x,
            sliding_window_shapes=(3, WINDOW, WINDOW),
            strides=(3, STRIDE, STRIDE),
            baselines=0.0,
            target=self.t,
            perturbations_per_eval=OCCLUSION_PERTURBATIONS_PER_EVAL,
        )
        # The window spans every channel, so every channel holds the same value.
        return result.detach()[:, 0].numpy()

    def captum_grad_cam(self, layer: str = "conv6") -> np.ndarray:
        """Grad-CAM at `layer`, at the layer's resolution, (N, h, w)."""
        cam = LayerGradCam(self.net, self.net.cam_module(layer))
        return cam.attribute(self.x, target=self.t, relu_attributions=True).detach()[:, 0].numpy()

    def captum_grad_cam_all(self) -> dict[str, np.ndarray]:
        """Grad-CAM at every conv layer, one LayerGradCam per layer."""
        return {layer: self.captum_grad_cam(layer) for layer in CONV_LAYERS}

    def captum_all(self) -> dict[str, Maps]:
        """Every method, one after another."""
        return {
            "saliency": self.captum_saliency(),
            "guided_backprop": self.captum_guided_backprop(),
            "gradient_x_input": self.captum_gradient_x_input(),
            "smoothgrad": self.captum_smoothgrad(),
            "integrated_gradients": self.captum_integrated_gradients(),
            "occlusion": self.captum_occlusion(),
            "grad_cam": self.captum_grad_cam_all(),
        }

    # reportgen ---------------------------------------------------------------------------------
    def reportgen_saliency(self) -> np.ndarray:
        """Signed input gradient."""
        return np.asarray(api.saliency(self.model, self.images, self.targets))

    def reportgen_guided_backprop(self) -> np.ndarray:
        """Guided backpropagation."""
        return np.asarray(api.guided_backprop(self.model, self.images, self.targets))

    def reportgen_gradient_x_input(self) -> np.ndarray:
        """Gradient times input."""
        return np.asarray(api.gradient_x_input(self.model, self.images, self.targets))

    def reportgen_smoothgrad(self) -> np.ndarray:
        """SmoothGrad, noise std 0.15 x each image's value range."""
        return np.asarray(
            api.smoothgrad(self.model, self.images, self.targets, samples=SMOOTHGRAD_SAMPLES, noise=SMOOTHGRAD_NOISE)
        )

    def reportgen_integrated_gradients(self) -> np.ndarray:
        """Integrated Gradients, right Riemann sum, black baseline."""
        return np.asarray(
            api.integrated_gradients(
                self.model, self.images, self.targets, steps=IG_STEPS, baseline="black", rule="riemann"
            )
        )

    def reportgen_occlusion(self) -> np.ndarray:
        """Drop in target probability, averaged over the windows covering each pixel, (N, H, W)."""
        return np.asarray(
            api.occlusion(self.model, self.images, self.targets, window=WINDOW, stride=STRIDE, baseline=0.0)
        )

    def reportgen_grad_cam(self) -> np.ndarray:
        """Grad-CAM at conv6, (N, h, w)."""
        return np.asarray(api.grad_cam(self.model, self.images, self.targets, layer="conv6"))

    def reportgen_grad_cam_all(self) -> dict[str, np.ndarray]:
        """Grad-CAM at every conv layer from one shared backward pass (`layer=` a sequence)."""
        result = api.grad_cam(self.model, self.images, self.targets, layer=CONV_LAYERS)
        if not isinstance(result, dict):
            raise TypeError(f"api.grad_cam(layer=[...]) returned {type(result).__name__}, not a dict")
        return {layer: np.asarray(result[layer]) for layer in CONV_LAYERS}

    def reportgen_all(self) -> dict[str, Maps]:
        """Every method through `api.attribute`, which shares passes between them.

        Grad-CAM is asked for through `cam_layers` with `layer_cam_methods=["grad_cam"]`: its
        "layer_cams" hold {layer: {"grad_cam": (N, h, w)}} from one backward pass. "grad_cam" in
        `methods` would add a map upsampled to the input, which Captum does not compute here.
        """
        attribute: Callable[..., dict[str, Any]] = api.attribute
        result = attribute(
            self.model,
            self.images,
            self.targets,
            methods=ALL_METHODS,
            smoothgrad_samples=SMOOTHGRAD_SAMPLES,
            smoothgrad_noise=SMOOTHGRAD_NOISE,
            ig_steps=IG_STEPS,
            ig_rule="riemann",
            ig_baseline="black",
            occlusion_window=WINDOW,
            occlusion_stride=STRIDE,
            occlusion_fill=0.0,
            cam_layers=CONV_LAYERS,
            layer_cam_methods=["grad_cam"],
        )
        maps: dict[str, Maps] = {name: np.asarray(result[name]) for name in ALL_METHODS}
        maps["grad_cam"] = {layer: np.asarray(result["layer_cams"][layer]["grad_cam"]) for layer in CONV_LAYERS}
        return maps


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max|a - b| / max|b| (b the reference); shapes must match."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    scale = float(np.max(np.abs(b)))
    return float(np.max(np.abs(a - b))) / (scale if scale > 0 else 1.0)


def correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each image's map in a with the same image's map in b."""
    a = a.reshape(len(a), -1) - a.reshape(len(a), -1).mean(axis=1, keepdims=True)
    b = b.reshape(len(b), -1) - b.reshape(len(b), -1).mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)


def optional(fn: Callable[[], Any]) -> str | None:
    """None when fn() runs, else the reason it cannot (an API not in this reportgen yet)."""
    try:
        fn()
    except Exception as e:
        message = f"{type(e).__name__}: {e}"
        return message if len(message) <= 100 else message[:97] + "..."
    return None


def as_dict(maps: Maps) -> dict[str, np.ndarray]:
    """Maps keyed by layer (a plain array under the key "")."""
    return maps if isinstance(maps, dict) else {"": maps}


def max_error(a: Maps, b: Maps) -> float:
    """The largest `relative_error` over the layers both hold (b the reference)."""
    a, b = as_dict(a), as_dict(b)
    common = [k for k in b if k in a]
    if not common:
        raise ValueError(f"no common layers: {sorted(a)} vs {sorted(b)}")
    return max(relative_error(a[k], b[k]) for k in common)


class Agreement:
    """Collects the comparisons; a miss of the strict tolerance is judged against float64 Captum."""

    def __init__(self, peers: Peers, strict: bool) -> None:
        self.peers = peers
        self.strict = strict
        self._peers64: Peers | None = None
        self.results: dict[str, Any] = {}
        self.failures: list[str] = []

    def peers64(self) -> Peers:
        """The same Captum set-up in float64: the reference when float32 rounding decides a branch."""
        if self._peers64 is None:
            p = self.peers
            self._peers64 = Peers(p.model, copy.deepcopy(p.net).double(), p.images, p.targets, dtype=torch.float64)
        return self._peers64

    def record(self, label: str, error: float, ok: bool, extra: dict[str, Any] | None = None, note: str = "") -> None:
        """Store and print one comparison."""
        self.results[label] = {"relative_error": error, "ok": ok, **(extra or {})}
        status = ("ok*" if error > TOLERANCE else "ok") if ok else "FAIL"
        print(f"  {label:36s} rel. error {error:.2e}  {status}{note}")
        if not ok:
            self.failures.append(label)

    def compare(self, label: str, method: str, reportgen_maps: Maps) -> None:
        """Captum's `method` against reportgen's maps.

        Passes at max|captum - reportgen| / max|reportgen| <= 1e-4. Otherwise (unless strict) it
        passes when reportgen is no further from Captum run in float64 than Captum's own float32
        result is, plus 1e-4: then the difference is float32 rounding deciding a discrete branch
        (which of two nearly equal values a max pool routes the gradient to), not a different method.
        """
        captum_maps = getattr(self.peers, f"captum_{method}")()
        error = max_error(captum_maps, reportgen_maps)
        if error <= TOLERANCE or self.strict:
            self.record(label, error, error <= TOLERANCE)
            return
        reference = getattr(self.peers64(), f"captum_{method}")()
        reportgen_error, captum_error = max_error(reportgen_maps, reference), max_error(captum_maps, reference)
        ok = reportgen_error <= captum_error + TOLERANCE
        extra = {"reportgen_vs_captum64": reportgen_error, "captum32_vs_captum64": captum_error, "float32_noise": ok}
        note = (
            f"  (over 1e-4; vs Captum float64: reportgen {reportgen_error:.2e}, Captum float32 {captum_error:.2e}"
            f"{': float32 rounding' if ok else ''})"
        )
        self.record(label, error, ok, extra, note)

    def compare_smoothgrad(self, label: str, captum_maps: np.ndarray, reportgen_maps: np.ndarray) -> None:
        """Same shape, and a median per-image correlation above 0.9 (the noise draws differ)."""
        if captum_maps.shape != reportgen_maps.shape:
            self.results[label] = {"ok": False, "shapes": [captum_maps.shape, reportgen_maps.shape]}
            self.failures.append(label)
            print(f"  {label:36s} shapes differ: {captum_maps.shape} vs {reportgen_maps.shape}  FAIL")
            return
        r = correlations(captum_maps, reportgen_maps)
        ok = bool(np.median(r) > MIN_CORRELATION)
        self.results[label] = {
            "correlation_median": float(np.median(r)),
            "correlation_min": float(r.min()),
            "correlation_mean": float(r.mean()),
            "ok": ok,
        }
        print(
            f"  {label:36s} per-image correlation median {np.median(r):.3f}, "
            f"min {r.min():.3f}  {'ok' if ok else 'FAIL'}"
        )
        if not ok:
            self.failures.append(label)


def check_agreement(
    peers: Peers, logits_torch: np.ndarray, available: dict[str, str | None], strict: bool
) -> Agreement:
    """Compare every method's maps, printing one line each."""
    check = Agreement(peers, strict)
    logits_error = relative_error(logits_torch, np.asarray(api.predict(peers.model, peers.images)))
    check.record("logits", logits_error, logits_error <= TOLERANCE)
    check.compare("saliency", "saliency", peers.reportgen_saliency())
    check.compare("guided_backprop", "guided_backprop", peers.reportgen_guided_backprop())
    check.compare("gradient_x_input", "gradient_x_input", peers.reportgen_gradient_x_input())
    check.compare(
        f"integrated_gradients ({IG_STEPS} steps)", "integrated_gradients", peers.reportgen_integrated_gradients()
    )
    check.compare(f"occlusion ({WINDOW}x{WINDOW}, stride {STRIDE})", "occlusion", peers.reportgen_occlusion())
    check.compare("grad_cam (conv6)", "grad_cam", peers.reportgen_grad_cam())
    check.compare_smoothgrad(
        f"smoothgrad ({SMOOTHGRAD_SAMPLES} samples)", peers.captum_smoothgrad(), peers.reportgen_smoothgrad()
    )
    if available["grad_cam (6 conv layers)"] is None:
        check.compare("grad_cam (6 layers, one pass)", "grad_cam_all", peers.reportgen_grad_cam_all())
    if available["all methods"] is None:
        for name, value in peers.reportgen_all().items():
            method = "grad_cam_all" if name == "grad_cam" and isinstance(value, dict) else name
            if name == "smoothgrad" and isinstance(value, np.ndarray):
                check.compare_smoothgrad("api.attribute: smoothgrad", peers.captum_smoothgrad(), value)
            elif hasattr(peers, f"captum_{method}"):
                check.compare(f"api.attribute: {name}", method, value)
            else:
                print(f"  api.attribute: {name}: no Captum counterpart here; not compared")
    return check


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Median seconds of fn() after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_pair(captum_fn: Callable[[], Any], reportgen_fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """Median seconds of Captum and reportgen, alternating runs, after one warm-up of each."""
    reportgen_fn()
    captum_fn()
    captum_times, reportgen_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        reportgen_fn()
        reportgen_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        captum_fn()
        captum_times.append(time.perf_counter() - start)
    return statistics.median(captum_times), statistics.median(reportgen_times)


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or platform's guess."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: Sequence[str] | None = None) -> int:
    """Check agreement, time both libraries, print the table and write the JSON; the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per method (median)")
    parser.add_argument("--images", type=int, default=64, help="number of probe images")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "peer_captum.json")
    parser.add_argument("--check-only", action="store_true", help="run the agreement checks only")
    parser.add_argument(
        "--strict", action="store_true", help="1e-4 for every method, without the float64 Captum reference"
    )
    args = parser.parse_args(argv)

    # Captum warns on every call that it set requires_grad on the inputs, and when it hooks ReLUs.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"captum\.")
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    model = api.load_model(f"{DEMO / 'model.py'}:TrafficSignNet", DEMO / "checkpoint")
    probe = read_probe(DEMO / "probe", model.input_shape, read_classes(DEMO / "classes.txt", 43))
    images = np.ascontiguousarray(probe.images[: args.images], np.float32)  # identity preprocessing
    net = torch_model(model.variables)
    logits = net(nchw(images)).detach().numpy()
    targets = logits.argmax(axis=1).astype(np.int32)
    peers = Peers(model, net, images, targets)
    print(
        f"{len(images)} probe images, jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}"
    )

    available = {
        "grad_cam (6 conv layers)": optional(lambda: api.grad_cam(model, images[:1], targets[:1], layer=CONV_LAYERS)),
        "all methods": None if hasattr(api, "attribute") else "api.attribute is not in this reportgen",
    }
    for name, reason in available.items():
        if reason is not None:
            print(f"  reportgen {name}: not available ({reason}); skipped")

    print("agreement (max|captum - reportgen| / max|reportgen|):")
    agreement = check_agreement(peers, logits, available, args.strict)
    if agreement.failures:
        print(f"agreement failed: {', '.join(agreement.failures)}", file=sys.stderr)
        return 1
    if args.check_only:
        return 0

    methods: list[tuple[str, Callable[[], Any], Callable[[], Any] | None]] = [
        ("saliency", peers.captum_saliency, peers.reportgen_saliency),
        ("guided_backprop", peers.captum_guided_backprop, peers.reportgen_guided_backprop),
        ("gradient_x_input", peers.captum_gradient_x_input, peers.reportgen_gradient_x_input),
        (f"smoothgrad ({SMOOTHGRAD_SAMPLES} samples)", peers.captum_smoothgrad, peers.reportgen_smoothgrad),
        (
            f"integrated_gradients ({IG_STEPS} steps)",
            peers.captum_integrated_gradients,
            peers.reportgen_integrated_gradients,
        ),
        (f"occlusion ({WINDOW}x{WINDOW}, stride {STRIDE})", peers.captum_occlusion, peers.reportgen_occlusion),
        ("grad_cam (conv6)", peers.captum_grad_cam, peers.reportgen_grad_cam),
        (
            "grad_cam (6 conv layers)",
            peers.captum_grad_cam_all,
            peers.reportgen_grad_cam_all if available["grad_cam (6 conv layers)"] is None else None,
        ),
        ("all methods", peers.captum_all, peers.reportgen_all if available["all methods"] is None else None),
    ]
    rows: list[dict[str, Any]] = []
    print(f"\ntiming: median of {args.repeats} after one warm-up, alternating runs; ratio > 1: reportgen faster")
    print(f"  {'method':34s} {'captum s':>10s} {'reportgen s':>12s} {'ratio':>7s}")
    for name, captum_fn, reportgen_fn in methods:
        if reportgen_fn is None:  # the reportgen form is not there yet: Captum alone, for reference
            captum_s = median_time(captum_fn, args.repeats)
            rows.append({"method": name, "captum_s": captum_s, "reportgen_s": None, "ratio": None,
                         "note": f"reportgen: {available[name]}"})  # fmt: skip
            print(f"  {name:34s} {captum_s:10.3f} {'-':>12s} {'-':>7s}  (reportgen: not available)")
            continue
        captum_s, reportgen_s = time_pair(captum_fn, reportgen_fn, args.repeats)
        ratio = captum_s / reportgen_s
        rows.append({"method": name, "captum_s": captum_s, "reportgen_s": reportgen_s, "ratio": ratio})
        print(f"  {name:34s} {captum_s:10.3f} {reportgen_s:12.3f} {ratio:7.2f}")

    report = {
        "benchmark": "reportgen vs captum, demo TrafficSignNet",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "captum": captum.__version__,
            "jax": jax.__version__,
            "numpy": np.__version__,
        },
        "device": {
            "jax": [str(d) for d in jax.devices()],
            "torch": "cpu",
            "cpu": cpu_name(),
            "cpu_count": threads,
            "torch_threads": torch.get_num_threads(),
        },
        "images": len(images),
        "repeats": args.repeats,
        "settings": {
            "smoothgrad_samples": SMOOTHGRAD_SAMPLES,
            "smoothgrad_noise": SMOOTHGRAD_NOISE,
            "ig_steps": IG_STEPS,
            "ig_rule": "riemann (right) / riemann_right",
            "occlusion_window": WINDOW,
            "occlusion_stride": STRIDE,
            "cam_layers": CONV_LAYERS,
            "captum_ig_internal_batch_size": IG_INTERNAL_BATCH,
            "captum_occlusion_perturbations_per_eval": OCCLUSION_PERTURBATIONS_PER_EVAL,
        },
        "agreement": {"tolerance": TOLERANCE, "strict": args.strict, **agreement.results},
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
