"""The attribution methods, one row each: name, title, whether the sign means something, what it
reads, its paper. The report (columns, tiles, scores, the methods table) and `reportgen.api`
(valid names) are wired from these rows; `reportgen.attribution.MethodRunner` has one function per
row that computes it, sharing passes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One attribution method."""

    name: str
    title: str
    signed: bool  # the sign means something (evidence for or against the class)
    shared_pass: bool  # reads the one forward and backward pass shared with other methods
    needs: str  # what it costs, in words, for the report
    reference: str


CATALOGUE: tuple[Method, ...] = (
    Method(
        "saliency", "Saliency", False, True, "the shared backward pass",
        "Simonyan, Vedaldi & Zisserman 2013, Deep Inside Convolutional Networks",
    ),
    Method(
        "guided_backprop", "Guided backprop", False, False, "one backward pass with the guided ReLU rule",
        "Springenberg et al. 2014, Striving for Simplicity: The All Convolutional Net",
    ),
    Method(
        "deconvnet", "Deconvnet", False, False, "one backward pass with the deconvnet ReLU rule",
        "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks",
    ),
    Method(
        "lrp", "LRP", True, False, "one backward pass with the LRP rules (z^B, γ, ε)",
        "Bach et al. 2015, On Pixel-Wise Explanations by Layer-Wise Relevance Propagation;"
        " Montavon et al. 2019, Layer-Wise Relevance Propagation: An Overview",
    ),
    Method(
        "gradient_x_input", "Gradient × input", True, True, "the shared backward pass",
        "Shrikumar et al. 2016, Not Just a Black Box",
    ),
    Method(
        "smoothgrad", "SmoothGrad", False, False, "one backward pass per noise sample",
        "Smilkov et al. 2017, SmoothGrad: removing noise by adding noise",
    ),
    Method(
        "integrated_gradients", "Integrated Gradients", True, False, "one backward pass per path point",
        "Sundararajan, Taly & Yan 2017, Axiomatic Attribution for Deep Networks",
    ),
    Method(
        "grad_cam", "Grad-CAM", False, True, "the shared pass at the CAM layer",
        "Selvaraju et al. 2017, Grad-CAM: Visual Explanations from Deep Networks",
    ),
    Method(
        "grad_cam_pp", "Grad-CAM++", False, True, "the shared pass at the CAM layer",
        "Chattopadhyay et al. 2018, Grad-CAM++",
    ),
    Method(
        "layer_cam", "Layer-CAM", False, True, "the shared pass at the CAM layer",
        "Jiang et al. 2021, LayerCAM: Exploring Hierarchical Class Activation Maps",
    ),
    Method(
        "hires_cam", "HiResCAM", False, True, "the shared pass at the CAM layer",
        "Draelos & Carin 2020, Use HiResCAM instead of Grad-CAM for faithful explanations",
    ),
    Method(
        "eigen_cam", "EigenCAM", False, True, "the shared pass at the CAM layer (no gradient: class-agnostic)",
        "Muhammad & Yeasin 2020, Eigen-CAM: Class Activation Map using Principal Components",
    ),
    Method(
        "score_cam", "Score-CAM", False, True, "one forward pass per channel of the CAM layer",
        "Wang et al. 2020, Score-CAM: Score-Weighted Visual Explanations",
    ),
    Method(
        "guided_grad_cam", "Guided Grad-CAM", False, True, "guided backprop times Grad-CAM",
        "Selvaraju et al. 2017, Grad-CAM: Visual Explanations from Deep Networks",
    ),
    Method(
        "occlusion", "Occlusion", True, False, "one forward pass per occluding window",
        "Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks",
    ),
)  # fmt: skip

METHODS: tuple[str, ...] = tuple(m.name for m in CATALOGUE)
TITLES: Mapping[str, str] = {m.name: m.title for m in CATALOGUE}
SIGNED = frozenset(m.name for m in CATALOGUE if m.signed)
LAYER_CAMS = ("grad_cam", "grad_cam_pp", "layer_cam", "hires_cam", "eigen_cam")
"""CAMs drawn at every conv and pooling layer: all of them come from the one shared backward pass."""


def method(name: str) -> Method:
    """The catalogue row called `name`; ValueError naming the choices otherwise."""
    for row in CATALOGUE:
        if row.name == name:
            return row
    raise ValueError(f"unknown attribution method {name!r}; choose from {', '.join(METHODS)}")
