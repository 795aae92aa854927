"""Import a model spec, restore its orbax checkpoint, and trace it into a layer graph.

A spec is `path/to/file.py:NAME` or `package.module:NAME`, where NAME is a Flax Linen module class
or instance, a Flax NNX module class, or a factory returning one of those. The abstract variables
come from `jax.eval_shape` / `nnx.eval_shape` (no real initialisation); the checkpoint is compared
leaf by leaf with them and any mismatch is one error, never a partial restore.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from reportgen import distributed
from reportgen.errors import UserError
from reportgen.model.graph import Graph, build_graph, strip_scope_root, trace

Tree = dict[str, Any]
INFERENCE_FLAGS = {
    "train": False,
    "training": False,
    "is_training": False,
    "deterministic": True,
    "use_running_average": True,
}


@dataclass(frozen=True)
class CheckpointInfo:
    """Where the weights came from."""

    path: str
    step: int | None
    sha256: str
    files: int
    bytes: int


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A restored model: a pure per-example apply function, its variables and its layer graph."""

    spec: str
    api: str  # "linen" or "nnx"
    class_name: str
    apply: Callable[[Any, jax.Array], jax.Array] = field(repr=False)
    variables: Any = field(repr=False)
    input_shape: tuple[int, int, int]
    graph: Graph = field(repr=False)
    checkpoint: CheckpointInfo

    @property
    def layers(self) -> list[str]:
        """Layer names in forward order."""
        return [layer.name for layer in self.graph.layers]

    @property
    def num_params(self) -> int:
        """Number of scalar values in the restored variables."""
        return sum(int(np.size(v)) for v in jax.tree.leaves(self.variables))


# ---------------------------------------------------------------------------------------------
# Spec


def import_spec(spec: str) -> Any:
    """The object named by `path/file.py:NAME` or `package.module:NAME`."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise UserError(f"model spec {spec!r} is not of the form path/to/file.py:NAME or package.module:NAME")
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _import_file(Path(target))
    else:
        try:
            module = importlib.import_module(target)
        except (ImportError, TypeError, ValueError) as e:  # relative or empty names raise the latter two
            raise UserError(f"cannot import module {target!r} of model spec {spec!r}: {e}") from e
    if not hasattr(module, name):
        raise UserError(f"{target} has no attribute {name!r}; check the NAME after ':' in --model")
    return getattr(module, name)


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"model file {path} does not exist; pass --model path/to/file.py:NAME")
    module_name = "reportgen_user_" + hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses (Flax modules) look their module up here
    sys.path.insert(0, str(path.resolve().parent))
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[module_name]
        raise UserError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    finally:
        sys.path.remove(str(path.resolve().parent))
    return module


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def build_module(obj: Any, kwargs: Mapping[str, Any], spec: str) -> nn.Module | nnx.Module:
    """A Linen module, or an abstract NNX module, from what the spec names."""
    if isinstance(obj, nn.Module):
        if kwargs:
            raise UserError(f"{spec} is a module instance; model_kwargs can only be given to a class or factory")
        return obj
    linen: list[nn.Module] = []

    def build() -> nnx.Module | None:
        if inspect.isclass(obj) and issubclass(obj, nnx.Module):
            extra = {"rngs": nnx.Rngs(0)} if _accepts(obj, "rngs") and "rngs" not in kwargs else {}
            return obj(**kwargs, **extra)
        if inspect.isclass(obj) and issubclass(obj, nn.Module):
            linen.append(obj(**kwargs))
            return None
        if callable(obj) and not inspect.isclass(obj):
            extra = {"rngs": nnx.Rngs(0)} if _accepts(obj, "rngs") and "rngs" not in kwargs else {}
            made = obj(**kwargs, **extra)
            if isinstance(made, nn.Module):
                linen.append(made)
                return None
            if isinstance(made, nnx.Module):
                return made
            raise UserError(f"{spec} returned {type(made).__name__}, not a Flax Linen or NNX module")
        raise UserError(f"{spec} is {type(obj).__name__}, not a Flax Linen or NNX module class, instance or factory")

    try:
        abstract = nnx.eval_shape(build)
    except UserError:
        raise
    except TypeError as e:
        raise UserError(f"constructing {spec} failed: {e}; set its arguments under model_kwargs in the config") from e
    if linen:
        return linen[0]
    assert abstract is not None
    return abstract


def _input_shape(module: Any, given: tuple[int, ...] | None) -> tuple[int, int, int]:
    shape = given if given is not None else getattr(module, "input_shape", None)
    if shape is None:
        raise UserError("the input shape is unknown; pass --input-shape H,W,C or set input_shape in the config")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"input shape {shape} is not H,W,C with positive sizes")
    return shape  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# Checkpoint


def resolve_checkpoint(path: Path, step: int | None) -> tuple[Path, int | None]:
    """The item directory to restore: a checkpoint directory, or a step of a CheckpointManager root."""
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass --checkpoint DIR of an orbax checkpoint")
    if not path.is_dir():
        raise UserError(f"checkpoint {path} is a file; pass the orbax checkpoint directory")
    if _is_item(path):
        if step is not None:
            raise UserError(f"--step {step} was given but {path} is a single checkpoint, not a CheckpointManager root")
        return path, None
    steps = sorted(int(p.name) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    if steps:
        chosen = steps[-1] if step is None else step
        if chosen not in steps:
            raise UserError(f"step {chosen} is not in {path}; available steps: {', '.join(map(str, steps))}")
        return _item_in(path / str(chosen)), chosen
    if step is None and any(p.is_dir() and _is_item(p) for p in path.iterdir()):
        return _item_in(path), None
    raise UserError(
        f"{path} is not an orbax checkpoint (no _METADATA or numbered step folders); pass the folder orbax wrote"
    )


def _is_item(path: Path) -> bool:
    return (path / "_METADATA").is_file() or (path / "manifest.ocdbt").is_file()


def _item_in(step_dir: Path) -> Path:
    if _is_item(step_dir):
        return step_dir
    items = sorted(p for p in step_dir.iterdir() if p.is_dir() and _is_item(p))
    for preferred in ("default", "state", "model", "params"):
        if any(p.name == preferred for p in items):
            return step_dir / preferred
    if len(items) == 1:
        return items[0]
    if not items:
        raise UserError(f"{step_dir} holds no orbax checkpoint item; the checkpoint may be truncated")
    raise UserError(f"{step_dir} holds several items ({', '.join(p.name for p in items)}); pass one with --checkpoint")


def checkpoint_digest(path: Path) -> tuple[str, int, int]:
    """sha256 over the relative paths and contents of every file, with file count and bytes."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    total = 0
    for f in files:
        data = f.read_bytes()
        total += len(data)
        digest.update(f.relative_to(path).as_posix().encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest(), len(files), total


def restore_tree(item: Path) -> Tree:
    """Every array of an orbax checkpoint item, as numpy, in its saved tree structure."""
    try:
        with _quiet_absl(), warnings.catch_warnings(), _silent_stderr_on_failure():
            # Arrays are copied to host numpy below, so orbax's note about missing sharding is moot.
            warnings.filterwarnings("ignore", message=".*[Ss]harding info not provided.*")
            with ocp.PyTreeCheckpointer() as checkpointer:
                on_this_host = _on_this_host(checkpointer, item)
                restored = (
                    checkpointer.restore(item.resolve())
                    if on_this_host is None
                    else checkpointer.restore(item.resolve(), args=on_this_host)
                )
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        for noise in (" [tensorstore_spec=", " See full TensorStore details"):
            first = first.split(noise)[0]
        first = first[:300]
        raise UserError(
            f"cannot read orbax checkpoint {item}: {type(e).__name__}: {first}"
            "; it may be truncated or not an orbax checkpoint"
        ) from e
    if not isinstance(restored, Mapping):
        raise UserError(f"checkpoint {item} holds a {type(restored).__name__}, not a tree of arrays")
    return jax.tree.map(_host, dict(restored))


def _on_this_host(checkpointer: ocp.PyTreeCheckpointer, item: Path) -> ocp.args.PyTreeRestore | None:
    """In a multi-host run, arguments that restore every array whole onto this host's first
    device (orbax otherwise asks for a sharding of each array across the hosts); None elsewhere."""
    if distributed.processes() == 1:
        return None
    saved = checkpointer.metadata(item.resolve()).item_metadata.tree
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])

    def restore_args(leaf: Any) -> ocp.RestoreArgs:
        if isinstance(leaf, ocp.metadata.ArrayMetadata):
            return ocp.ArrayRestoreArgs(sharding=here)
        return ocp.RestoreArgs()

    return ocp.args.PyTreeRestore(restore_args=jax.tree.map(restore_args, saved))


def _host(leaf: Any) -> Any:
    """A numpy copy of a restored leaf; RNG keys stay JAX arrays (numpy cannot hold them)."""
    dtype = getattr(leaf, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return leaf
    return np.asarray(leaf)


@contextlib.contextmanager
def _silent_stderr_on_failure(drain_seconds: float = 0.5) -> Iterator[None]:
    """When a restore fails part-way (a truncated file), tensorstore's outstanding reads call back
    into orbax's already closed event loop and each prints a "RuntimeError: Event loop is closed"
    traceback from a native thread. Such output cannot be caught in Python, so stderr's file
    descriptor is pointed at /dev/null during the restore, and on failure until the reads have
    drained; the one-line error is printed after."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    except BaseException:
        time.sleep(drain_seconds)
        raise
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    import logging

    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _flat(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out: dict[tuple[str, ...], Any] = {}
    for key, value in tree.items():
        path = (*prefix, str(key))
        if isinstance(value, Mapping):
            if set(value) == {"value"} and not isinstance(value["value"], Mapping):
                out[path] = value["value"]  # NNX states saved with Variable wrappers
            else:
                out.update(_flat(value, path))
        else:
            out[path] = value
    return out


def _unflat(flat: Mapping[tuple[str, ...], Any]) -> Tree:
    tree: Tree = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def _locate(saved: Tree, target: Tree) -> Tree:
    """The part of a saved tree that holds the model's variables (skips optimizer state etc.)."""
    target_keys = set(target)
    if target_keys <= set(saved) or set(saved) & target_keys:
        return {k: saved[k] for k in saved if k in target_keys} | {
            k: v for k, v in saved.items() if k not in target_keys and not _is_bookkeeping(k, v)
        }
    if "params" in target_keys and "params" not in saved:
        children = [v for v in saved.values() if isinstance(v, Mapping) and "params" in v]
        if len(children) == 1:
            return _locate(dict(children[0]), target)
        return {"params": saved}
    return saved


def _is_bookkeeping(key: str, value: Any) -> bool:
    """Train-state entries that are not model variables."""
    return key in {"step", "opt_state", "tx", "apply_fn", "rng", "rngs", "dropout_rng", "epoch"} or not isinstance(
        value, Mapping
    )


def match_variables(saved: Tree, target: Tree, ignored: set[tuple[str, ...]], where: str) -> Tree:
    """Saved arrays arranged like `target` (abstract), after checking every leaf; else UserError."""
    have = _flat(_locate(saved, target))
    want = _flat(target)
    missing = sorted(p for p in want if p not in have)
    unexpected = sorted(p for p in have if p not in want and p not in ignored)
    wrong = sorted(
        p
        for p in want
        if p in have
        and (tuple(np.shape(have[p])) != tuple(want[p].shape) or np.asarray(have[p]).dtype != want[p].dtype)
    )
    if missing or unexpected or wrong:

        def listing(label: str, paths: list[tuple[str, ...]], detail: Callable[[tuple[str, ...]], str]) -> str:
            shown = ", ".join(detail(p) for p in paths[:3]) + (f", +{len(paths) - 3} more" if len(paths) > 3 else "")
            return f"{len(paths)} {label} ({shown})"

        parts = []
        if missing:
            parts.append(listing("missing", missing, "/".join))
        if unexpected:
            parts.append(listing("unexpected", unexpected, "/".join))
        if wrong:
            parts.append(
                listing(
                    "mismatched",
                    wrong,
                    lambda p: (
                        f"{'/'.join(p)}: checkpoint {np.asarray(have[p]).dtype}{tuple(np.shape(have[p]))}"
                        f" vs model {want[p].dtype}{tuple(want[p].shape)}"
                    ),
                )
            )
        raise UserError(
            f"checkpoint {where} does not match the model: {'; '.join(parts)}; "
            "check that --model and its model_kwargs are the ones this checkpoint was trained with"
        )
    return _unflat({p: jnp.asarray(have[p]) for p in want})


# ---------------------------------------------------------------------------------------------
# Model APIs


def _inference_kwargs(module: nn.Module, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Arguments that put a Linen module's __call__ into inference mode, e.g. train=False."""
    params = inspect.signature(type(module).__call__).parameters
    kwargs = {k: v for k, v in INFERENCE_FLAGS.items() if k in params}
    kwargs.update(overrides)
    return kwargs


def _linen(
    module: nn.Module, shape: tuple[int, int, int], apply_kwargs: Mapping[str, Any]
) -> tuple[Callable[..., Any], Tree]:
    kwargs = _inference_kwargs(module, apply_kwargs)

    def init() -> Any:
        return module.init(jax.random.key(0), jnp.zeros((1, *shape), jnp.float32), **kwargs)

    try:
        abstract = jax.eval_shape(init)
    except Exception as e:
        raise UserError(f"the model cannot run on input shape {shape}: {type(e).__name__}: {_first_line(e)}") from e

    def apply(variables: Any, x: jax.Array) -> jax.Array:
        return module.apply(variables, x[None], **kwargs)[0]

    return apply, dict(abstract)


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _concrete(leaf: Any) -> Any:
    """A placeholder value for non-trained NNX state (RNG keys and counters)."""
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return jax.random.key(0)
    return jnp.zeros(leaf.shape, leaf.dtype)


def _nnx(
    abstract: nnx.Module,
) -> tuple[Callable[..., Any], Tree, set[tuple[str, ...]], Callable[[], contextlib.AbstractContextManager[None]]]:
    abstract.eval()
    graphdef, trained, rest = nnx.split(abstract, (nnx.Param, nnx.BatchStat), ...)  # type: ignore[misc]
    template = nnx.to_pure_dict(trained)
    rest = jax.tree.map(_concrete, rest)
    ignored = set(_flat(nnx.to_pure_dict(rest)))
    scopes: dict[int, str] = {}

    def apply(variables: Any, x: jax.Array) -> jax.Array:
        state = jax.tree.map(lambda leaf: leaf, trained)
        nnx.replace_by_pure_dict(state, variables)
        model = nnx.merge(graphdef, state, rest)
        scopes.clear()
        scopes.update(_relative_paths(model))
        return model(x[None])[0]

    return apply, template, ignored, lambda: _named_scopes(abstract, scopes)


def _relative_paths(model: nnx.Module) -> dict[int, str]:
    """Each submodule's attribute path relative to its parent module, e.g. 'conv1' or 'blocks.0'."""
    paths = {tuple(str(k) for k in path): m for path, m in nnx.iter_modules(model)}
    out: dict[int, str] = {}
    for path, m in paths.items():
        if not path:
            continue
        parent = max((p for p in paths if len(p) < len(path) and path[: len(p)] == p), key=len)
        out[id(m)] = ".".join(path[len(parent) :])
    return out


@contextlib.contextmanager
def _named_scopes(model: nnx.Module, scopes: dict[int, str]) -> Iterator[None]:
    """While tracing, run each NNX submodule's __call__ inside a jax.named_scope of its path."""
    classes = {type(m) for _, m in nnx.iter_modules(model)} - {type(model)}
    saved: dict[type, Any] = {}
    inside: set[int] = set()
    for cls in classes:
        saved[cls] = cls.__dict__.get("__call__", None)
        original = cls.__call__

        def wrapper(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> Any:
            name = scopes.get(id(self))
            if name is None or id(self) in inside:
                return __original(self, *args, **kwargs)
            inside.add(id(self))
            try:
                with jax.named_scope(name):
                    return __original(self, *args, **kwargs)
            finally:
                inside.discard(id(self))

        cls.__call__ = wrapper  # type: ignore[method-assign]
    try:
        yield
    finally:
        for cls, call in saved.items():
            if call is None:
                del cls.__call__  # type: ignore[misc]
            else:
                cls.__call__ = call  # type: ignore[method-assign]


def leaf_paths(tree: Any) -> list[str]:
    """Slash-separated key path of every leaf, in tree order."""
    return [
        "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def load_model(
    spec: str,
    checkpoint: str | Path,
    *,
    step: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    apply_kwargs: Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Import the model, restore its checkpoint and trace its layers; raises UserError on bad input."""
    module = build_module(import_spec(spec), model_kwargs or {}, spec)
    shape = _input_shape(module, input_shape)
    item, chosen_step = resolve_checkpoint(Path(checkpoint), step)
    saved = restore_tree(item)
    if isinstance(module, nn.Module):
        if apply_kwargs is None:
            apply_kwargs = {}
        apply, target = _linen(module, shape, apply_kwargs)
        ignored: set[tuple[str, ...]] = set()
        scoped: Callable[[], contextlib.AbstractContextManager[None]] = contextlib.nullcontext
        api = "linen"
    else:
        apply, target, ignored, scoped = _nnx(module)
        api = "nnx"
    variables = match_variables(saved, target, ignored, str(checkpoint))
    try:
        with scoped():
            flat = trace(apply, variables, shape)
    except Exception as e:
        raise UserError(f"the model cannot run on input shape {shape}: {type(e).__name__}: {_first_line(e)}") from e
    if api == "linen":
        flat = strip_scope_root(flat)
    graph = build_graph(flat, leaf_paths(variables))
    _validate(graph, spec)
    sha, files, size = checkpoint_digest(item)
    info = CheckpointInfo(str(checkpoint), chosen_step, sha, files, size)
    return LoadedModel(spec, api, type(module).__name__, apply, variables, shape, graph, info)


def _validate(graph: Graph, spec: str) -> None:
    (out,) = graph.flat.outputs
    out_shape = graph.flat.shapes[out] if isinstance(out, int) else ()
    if len(out_shape) != 1:
        raise UserError(f"{spec} returns shape {out_shape} for one image; reportgen needs one vector of class logits")
    if not any(layer.kind == "conv" for layer in graph.layers):
        raise UserError(f"{spec} has no convolution layer; reportgen explains convolutional networks")
