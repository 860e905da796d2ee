"""Classification on real data: scikit-learn's digits and MNIST-1D (offline,
always available; suites digits and mnist1d) and MNIST, Fashion-MNIST and
CIFAR-10 from local files (suite images; skipped when the files are absent)."""

from __future__ import annotations

import numpy as np

from stam_optimizer.benchmarks.programme.task import Config, Task
from stam_optimizer.benchmarks.tasks import data
from stam_optimizer.benchmarks.tasks.models import classification_task, cnn, mlp


def _cap(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `n` examples (evaluation sets are capped to keep runs cheap)."""
    return x[:n], y[:n]


def digits_mlp(cfg: Config) -> Task:
    ds = data.load_digits(seed=0)
    steps, every = cfg.schedule(40, 200, 500, 20)
    return classification_task(
        "digits_mlp", "digits", "scikit-learn digits (8x8), MLP 64-64-10; metric: validation "
        "cross-entropy", mlp((64, 64, 10)), ds.x_train, ds.y_train, ds.x_val, ds.y_val,
        x_test=ds.x_test, y_test=ds.y_test, steps=steps, batch_size=32,
        eval_every=every, min_effect=0.02, target=0.25)


def _mnist1d(cfg: Config) -> data.Dataset:
    return data.load_mnist1d(cfg.cache_dir, seed=0, num_samples=cfg.pick(1000, 5000, 5000))


def mnist1d_mlp(cfg: Config) -> Task:
    ds = _mnist1d(cfg)
    steps, every = cfg.schedule(40, 300, 800, 20)
    return classification_task(
        "mnist1d_mlp", "mnist1d", "MNIST-1D (procedural, 40-sample signals), MLP 40-128-128-10;"
        " metric: validation cross-entropy", mlp((40, 128, 128, 10)), ds.x_train, ds.y_train,
        ds.x_val, ds.y_val, x_test=ds.x_test, y_test=ds.y_test, steps=steps, batch_size=64,
        eval_every=every, min_effect=0.03, target=1.35)


def mnist1d_cnn(cfg: Config) -> Task:
    ds = _mnist1d(cfg)
    steps, every = cfg.schedule(40, 200, 400, 20)
    as_signal = lambda x: x[..., None]  # noqa: E731  (length 40, one channel)
    return classification_task(
        "mnist1d_cnn", "mnist1d", "MNIST-1D, 1-D CNN (3 conv layers of 16 channels, stride "
        "2) + dense head; metric: validation cross-entropy", cnn((40, 1), (16, 16, 16), 10),
        as_signal(ds.x_train), ds.y_train, as_signal(ds.x_val), ds.y_val,
        x_test=as_signal(ds.x_test), y_test=ds.y_test, steps=steps, batch_size=64,
        eval_every=every, min_effect=0.03, target=0.9)


def _images(which: str, arch: str):
    def make(cfg: Config) -> Task:
        if cfg.data_dir is None:
            raise data.DatasetMissing(f"{which}: no --data-dir given; the image suite reads "
                                      "MNIST, Fashion-MNIST and CIFAR-10 from local files")
        ds = data.load_cifar10(cfg.data_dir) if which == "cifar10" else \
            data.load_mnist(cfg.data_dir, which)
        shape = ds.x_train.shape[1:]
        model = mlp((int(np.prod(shape)), 256, 10)) if arch == "mlp" else \
            cnn(shape, (32, 64), 10, hidden=128)
        steps, every = cfg.schedule(20, 500, 3000, 10)
        n_eval = cfg.pick(256, 2000, 10000)
        return classification_task(
            f"{which}_{arch}", "images", f"{which} from local files, "
            f"{'MLP with one hidden layer of 256' if arch == 'mlp' else 'CNN 32-64 + dense 128'};"
            f" metric: validation cross-entropy (first {n_eval} validation images)", model,
            ds.x_train, ds.y_train, *_cap(ds.x_val, ds.y_val, n_eval),
            x_test=ds.x_test[:n_eval], y_test=ds.y_test[:n_eval], steps=steps, batch_size=64,
            eval_every=every, min_effect=0.02, target=0.5)
    return make


mnist_mlp, mnist_cnn = _images("mnist", "mlp"), _images("mnist", "cnn")
fashion_mnist_mlp, fashion_mnist_cnn = _images("fashion_mnist", "mlp"), _images("fashion_mnist",
                                                                               "cnn")
cifar10_mlp, cifar10_cnn = _images("cifar10", "mlp"), _images("cifar10", "cnn")
