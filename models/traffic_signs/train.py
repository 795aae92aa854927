"""Train the demo traffic-sign CNN on procedurally generated signs and save an orbax checkpoint.

    python models/traffic_signs/train.py            # ~10 minutes on 2 CPU cores
    python models/traffic_signs/train.py --seed 7 --steps 600 --out /tmp/release-b/checkpoint
    python models/traffic_signs/train.py --init-from models/traffic_signs/checkpoint --steps 40 \
        --train-size 4096 --seed 7 --out /tmp/finetuned/checkpoint

Writes `checkpoint/` (orbax, `{"params": ...}`) and `training.json` (seeds, steps, accuracy)
next to this file, or into the parent of `--out`. Deterministic for the given seeds on a given
JAX version and backend; `--seed` changes the initialisation and dropout keys (another "release"
of the same model, for `reportgen diff`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from data import generate  # noqa: E402
from model import TrafficSignNet  # noqa: E402
from signs import NUM_CLASSES  # noqa: E402

TRAIN_SEED = 0
HELDOUT_SEED = 1234
INIT_SEED = 42


def accuracy(model: TrafficSignNet, params: dict, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy in inference mode."""
    predict = jax.jit(lambda p, x: model.apply({"params": p}, x).argmax(-1))
    hits = sum(
        int((np.asarray(predict(params, images[i : i + 512])) == labels[i : i + 512]).sum())
        for i in range(0, len(images), 512)
    )
    return hits / len(images)


def train(
    steps: int, batch_size: int, train_size: int, out: Path, init_seed: int = INIT_SEED, init_from: Path | None = None
) -> dict:
    """Train from scratch (or fine-tune the checkpoint `init_from`), save the checkpoint into `out`,
    and return the training record."""
    start = time.perf_counter()
    images, labels = generate(train_size, seed=TRAIN_SEED)
    print(f"generated {train_size} training images in {time.perf_counter() - start:.0f} s", flush=True)
    model = TrafficSignNet()
    params = model.init(jax.random.key(init_seed), jnp.zeros((1, *TrafficSignNet.input_shape)))["params"]
    if init_from is not None:
        restored = ocp.StandardCheckpointer().restore(init_from.resolve(), {"params": params})
        params = restored["params"]
    schedule = optax.warmup_cosine_decay_schedule(0.0, 2e-3, min(100, max(1, steps // 10)), steps, end_value=2e-5)
    tx = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    order_rng = np.random.default_rng(TRAIN_SEED)
    order = order_rng.permutation(train_size)
    cursor = 0
    key = jax.random.key(init_seed + 1)
    for i in range(steps):
        if cursor + batch_size > train_size:
            order, cursor = order_rng.permutation(train_size), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        key, sub = jax.random.split(key)
        params, opt_state, loss = step(params, opt_state, images[idx], labels[idx], sub)
        if i % 100 == 0 or i == steps - 1:
            print(f"step {i:5d}  loss {float(loss):.4f}  {time.perf_counter() - start:.0f} s", flush=True)

    heldout_images, heldout_labels = generate(100 * NUM_CLASSES, seed=HELDOUT_SEED)
    acc = accuracy(model, params, heldout_images, heldout_labels)
    seconds = time.perf_counter() - start
    print(f"held-out top-1 accuracy: {acc:.4f} on {len(heldout_labels)} images ({seconds:.0f} s total)")

    if out.exists():
        shutil.rmtree(out)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(out.resolve(), {"params": params})
    checkpointer.wait_until_finished()
    return {
        "batch_size": batch_size,
        "heldout_accuracy": round(acc, 4),
        "heldout_images": len(heldout_labels),
        "heldout_seed": HELDOUT_SEED,
        "init_seed": init_seed,
        "init_from": None if init_from is None else init_from.name,
        "steps": steps,
        "train_images": train_size,
        "train_seed": TRAIN_SEED,
        "train_seconds": round(seconds),
    }


def main() -> None:
    """Parse flags, train, write checkpoint/ and training.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--seed", type=int, default=INIT_SEED, help="initialisation and dropout seed")
    parser.add_argument("--init-from", type=Path, help="fine-tune this checkpoint instead of starting from scratch")
    parser.add_argument("--out", type=Path, default=HERE / "checkpoint")
    args = parser.parse_args()
    record = train(args.steps, args.batch_size, args.train_size, args.out, args.seed, args.init_from)
    (args.out.parent / "training.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
