"""reportgen: explain a trained Flax CNN, layer by layer, in one self-contained HTML report."""

__version__ = "0.1.0"
