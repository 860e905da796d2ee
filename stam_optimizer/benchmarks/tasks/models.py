"""The model zoo of the benchmarks: every model the tasks, `stam-bench speed` and
`stam-bench memory` use, in plain JAX (no flax, so that a whole run compiles into
one small program), and the task builders shared by the task modules.

Trainable models are `(init(key), apply(params, x))` pairs; the memory
measurements use abstract parameter trees (`jax.ShapeDtypeStruct` leaves) of
larger models, built without allocating them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from stam_optimizer.benchmarks.programme.task import Task


def _dense(key, n_in: int, n_out: int) -> dict:
    return {"w": jax.random.normal(key, (n_in, n_out)) * jnp.sqrt(2.0 / n_in),
            "b": jnp.zeros(n_out)}


def mlp(sizes: Sequence[int]) -> tuple[Callable, Callable]:
    """ReLU MLP: `init(key)`, `apply(params, x)` (x is flattened)."""

    def init(key):
        keys = jax.random.split(key, len(sizes) - 1)
        return [_dense(k, a, b) for k, a, b in zip(keys, sizes[:-1], sizes[1:])]

    def apply(params, x):
        h = x.reshape(x.shape[0], -1)
        for layer in params[:-1]:
            h = jax.nn.relu(h @ layer["w"] + layer["b"])
        return h @ params[-1]["w"] + params[-1]["b"]

    return init, apply


def _patches(x, spatial: int):
    """Stride-2, size-3 'SAME' patches as a matrix: (batch, *out, 3**spatial * C).
    A convolution is then one matmul, which stays a matmul under `vmap` (XLA:CPU
    runs vmapped convolutions as slow grouped convolutions)."""
    for axis in range(spatial, 0, -1):  # last axis first: the first ends up major (HWIO)
        n, out = x.shape[axis], -(-x.shape[axis] // 2)
        total = max(2 * (out - 1) + 3 - n, 0)
        pad = [(0, 0)] * x.ndim
        pad[axis] = (total // 2, total - total // 2)
        xp = jnp.pad(x, pad)
        x = jnp.stack([jax.lax.slice_in_dim(xp, k, k + 2 * out - 1, 2, axis) for k in range(3)],
                      axis=-2)
        x = x.reshape(*x.shape[:-2], -1)
    return x


def cnn(in_shape: Sequence[int], channels: Sequence[int], n_out: int,
        hidden: int = 64) -> tuple[Callable, Callable]:
    """Conv (kernel 3 or 3x3, stride 2, 'SAME') + ReLU layers, then a dense head.
    `in_shape` is (length, channels) for 1-D signals or (height, width, channels)
    for images."""
    spatial = len(in_shape) - 1

    def init(key):
        keys = jax.random.split(key, len(channels) + 2)
        params, c_in, size = {"conv": []}, in_shape[-1], list(in_shape[:-1])
        for k, c in zip(keys, channels):
            params["conv"].append(_dense(k, c_in * 3**spatial, c))
            c_in, size = c, [-(-s // 2) for s in size]
        params["fc"] = _dense(keys[-2], c_in * int(np.prod(size)), hidden)
        params["out"] = _dense(keys[-1], hidden, n_out)
        return params

    def apply(params, x):
        h = x
        for layer in params["conv"]:
            h = jax.nn.relu(_patches(h, spatial) @ layer["w"] + layer["b"])
        h = jax.nn.relu(h.reshape(h.shape[0], -1) @ params["fc"]["w"] + params["fc"]["b"])
        return h @ params["out"]["w"] + params["out"]["b"]

    return init, apply


def transformer(vocab: int, d: int, layers: int, heads: int,
                seq: int) -> tuple[Callable, Callable]:
    """Pre-norm causal transformer with tied embeddings: `apply(params, tokens)`
    returns next-token logits for every position."""

    def init(key):
        ks = iter(jax.random.split(key, 2 + 4 * layers))
        nrm = lambda s, scale: jax.random.normal(next(ks), s) * scale  # noqa: E731
        return {"embed": nrm((vocab, d), 0.02), "pos": nrm((seq, d), 0.02),
                "ln_f": jnp.ones(d),
                "blocks": [{"ln1": jnp.ones(d), "ln2": jnp.ones(d),
                            "qkv": nrm((d, 3 * d), d**-0.5), "proj": nrm((d, d), d**-0.5),
                            "up": nrm((d, 4 * d), d**-0.5), "down": nrm((4 * d, d),
                                                                        (4 * d) ** -0.5)}
                           for _ in range(layers)]}

    mask = np.tril(np.ones((seq, seq), bool))

    def norm(x, g):
        return g * (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True)
                                                                    + 1e-5)

    def apply(params, tokens):
        b, t = tokens.shape
        x = params["embed"][tokens] + params["pos"][:t]
        for blk in params["blocks"]:
            q, k, v = jnp.split(norm(x, blk["ln1"]) @ blk["qkv"], 3, axis=-1)
            q, k, v = (a.reshape(b, t, heads, d // heads) for a in (q, k, v))
            att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(d // heads)
            att = jax.nn.softmax(jnp.where(mask[:t, :t], att, -1e9), axis=-1)
            x = x + jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d) @ blk["proj"]
            x = x + jax.nn.gelu(norm(x, blk["ln2"]) @ blk["up"]) @ blk["down"]
        return norm(x, params["ln_f"]) @ params["embed"].T

    return init, apply


def layer_norm(x, gain, eps: float = 1e-5):
    """LayerNorm over the last axis with a gain and no bias:
    `gain * (x - mean) / sqrt(var + eps)`."""
    return gain * (x - x.mean(-1, keepdims=True)) * jax.lax.rsqrt(x.var(-1, keepdims=True) + eps)


def gpt(vocab: int, d: int, layers: int, heads: int, seq: int,
        qk_norm: bool = False) -> tuple[Callable, Callable]:
    """GPT decoder: pre-LayerNorm blocks without biases, learned positions,
    untied input embedding and output head. `apply(params, tokens)` returns
    next-token logits (batch, time, vocab).

    Block: `x += proj(attn(LN(x)))`, `x += down(gelu(up(LN(x))))`; causal
    softmax attention with scores `q·k / sqrt(d_head)`. With `qk_norm`, queries
    and keys are layer-normalised over each head's features (with a learned
    gain) before the scores (Dehghani et al. 2023; Wortsman et al. 2023). Init:
    embeddings N(0, 0.02²), matrices N(0, 1/fan_in) with the residual outputs
    (proj, down) further divided by sqrt(2·layers), the head N(0, 1/d²) so that
    the initial loss is close to log(vocab).
    """
    if d % heads:
        raise ValueError(f"d ({d}) must be a multiple of heads ({heads})")
    dh = d // heads

    def init(key):
        ks = iter(jax.random.split(key, 3 + 4 * layers))
        nrm = lambda s, scale: jax.random.normal(next(ks), s) * scale  # noqa: E731
        res = (2 * layers) ** -0.5
        blocks = []
        for _ in range(layers):
            blk = {"ln1": jnp.ones(d), "ln2": jnp.ones(d), "qkv": nrm((d, 3 * d), d**-0.5),
                   "proj": nrm((d, d), d**-0.5 * res), "up": nrm((d, 4 * d), d**-0.5),
                   "down": nrm((4 * d, d), (4 * d) ** -0.5 * res)}
            if qk_norm:
                blk |= {"q_ln": jnp.ones(dh), "k_ln": jnp.ones(dh)}
            blocks.append(blk)
        return {"embed": nrm((vocab, d), 0.02), "pos": nrm((seq, d), 0.02), "blocks": blocks,
                "ln_f": jnp.ones(d), "head": nrm((d, vocab), 1.0 / d)}

    mask = np.tril(np.ones((seq, seq), bool))

    def apply(params, tokens):
        b, t = tokens.shape
        x = params["embed"][tokens] + params["pos"][:t]
        for blk in params["blocks"]:
            q, k, v = jnp.split(layer_norm(x, blk["ln1"]) @ blk["qkv"], 3, axis=-1)
            q, k, v = (a.reshape(b, t, heads, dh) for a in (q, k, v))
            if qk_norm:
                q, k = layer_norm(q, blk["q_ln"]), layer_norm(k, blk["k_ln"])
            att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(dh)
            att = jax.nn.softmax(jnp.where(mask[:t, :t], att, -1e9), axis=-1)
            x = x + jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(b, t, d) @ blk["proj"]
            x = x + jax.nn.gelu(layer_norm(x, blk["ln2"]) @ blk["up"]) @ blk["down"]
        return layer_norm(x, params["ln_f"]) @ params["head"]

    return init, apply


def z_loss(logits, weight: float = 1e-4):
    """The output-logit regulariser `weight * mean(log² Z)`, Z = sum(exp(logits))
    over the last axis (PaLM; Wortsman et al. 2023)."""
    return weight * jnp.mean(jax.nn.logsumexp(logits, axis=-1) ** 2)


def index(key, shape, n: int):
    """Uniform integers in [0, n): one draw of random bits, cheaper to compile than
    `jax.random.randint` (the modulo bias, below n / 2**32, is irrelevant here)."""
    return (jax.random.bits(key, shape, jnp.uint32) % n).astype(jnp.int32)


def xent(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def phase_of(step, shift_steps: Sequence[int]):
    """Index of the data distribution in force at `step` (0 before the first shift)."""
    step = jnp.asarray(step)
    return sum((step >= s).astype(jnp.int32) for s in shift_steps) if shift_steps else 0


def classification_task(name: str, suite: str, description: str, model: tuple,
                        x_train, y_train, x_val, y_val, *, steps: int, batch_size: int,
                        eval_every: int, min_effect: float, target: float,
                        shift_steps: Sequence[int] = (), grad_noise: float = 0.0,
                        x_test=None, y_test=None, metric: str = "val_loss") -> Task:
    """A classification task over arrays. With `shift_steps`, the arrays carry a
    leading phase axis (one dataset per distribution) and the phase in force at
    each step picks the training and validation data."""
    init, apply = model
    x_train, y_train = jnp.asarray(x_train), jnp.asarray(y_train)
    x_val, y_val = jnp.asarray(x_val), jnp.asarray(y_val)
    staged = bool(shift_steps)
    n = x_train.shape[1] if staged else x_train.shape[0]

    def batch(key, step):
        idx = index(key, (batch_size,), n)
        if staged:
            p = phase_of(step, shift_steps)
            return x_train[p][idx], y_train[p][idx]
        return x_train[idx], y_train[idx]

    def loss(params, b):
        return xent(apply(params, b[0]), b[1])

    def evaluate(params, step):
        xv, yv = (x_val[phase_of(step, shift_steps)], y_val[phase_of(step, shift_steps)]) \
            if staged else (x_val, y_val)
        logits = apply(params, xv)
        return {"val_loss": xent(logits, yv), "val_acc": jnp.mean(logits.argmax(-1) == yv)}

    def test(params):
        logits = apply(params, jnp.asarray(x_test))
        return {"test_loss": xent(logits, jnp.asarray(y_test)),
                "test_acc": jnp.mean(logits.argmax(-1) == jnp.asarray(y_test))}

    return Task(name=name, suite=suite, description=description, init=init, batch=batch,
                loss=loss, evaluate=evaluate, steps=steps, eval_every=eval_every,
                batch_size=batch_size, min_effect=min_effect, target=target, metric=metric,
                shift_steps=tuple(shift_steps), grad_noise=grad_noise,
                test=None if x_test is None else test)


def token_windows(tokens_train: np.ndarray, tokens_val: np.ndarray, seq: int,
                  batch_size: int, val_windows: int) -> tuple[Callable, jax.Array]:
    """Language-model data: `batch(key, step)` draws `batch_size` random windows of
    `seq + 1` tokens from the training stream; the validation set is `val_windows`
    evenly spaced windows of the validation stream."""
    train = jnp.asarray(tokens_train, jnp.int32)
    starts = np.linspace(0, len(tokens_val) - seq - 1, val_windows).astype(np.int64)
    val = jnp.asarray(np.stack([tokens_val[s:s + seq + 1] for s in starts]), jnp.int32)
    offsets = jnp.arange(seq + 1)

    def batch(key, step):
        s = index(key, (batch_size, 1), train.shape[0] - seq - 1)
        return train[s + offsets]

    return batch, val


def lm_task(name: str, suite: str, description: str, tokens_train: np.ndarray,
            tokens_val: np.ndarray, vocab: int, *, d: int, layers: int, heads: int, seq: int,
            steps: int, batch_size: int, eval_every: int, min_effect: float, target: float,
            val_windows: int = 64) -> Task:
    """Next-token prediction on a token stream with a small causal transformer."""
    init, apply = transformer(vocab, d, layers, heads, seq)
    batch, val = token_windows(tokens_train, tokens_val, seq, batch_size, val_windows)

    def loss(params, b):
        return xent(apply(params, b[:, :-1]), b[:, 1:])

    def evaluate(params, step):
        return {"val_loss": xent(apply(params, val[:, :-1]), val[:, 1:])}

    return Task(name=name, suite=suite, description=description, init=init, batch=batch,
                loss=loss, evaluate=evaluate, steps=steps, eval_every=eval_every,
                batch_size=batch_size, min_effect=min_effect, target=target)


# --- abstract parameter trees (stam-bench memory) ----------------------------------

def _sds(*shape: int) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(shape, jnp.float32)


def _mlp(sizes: tuple[int, ...]) -> dict:
    """Dense layers with biases between consecutive `sizes`."""
    return {f"layer{i}": {"w": _sds(a, b), "b": _sds(b)}
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))}


def small_mlp() -> dict:
    """64-128-64 MLP: 16.6k params, AdamW state ≈ 0.13 MB (as in 0.1.0)."""
    return _mlp((64, 128, 64))


def medium_mlp() -> dict:
    """1024-4096-4096-1024 MLP: 25.2M params, AdamW state ≈ 192.07 MB (as in 0.1.0)."""
    return _mlp((1024, 4096, 4096, 1024))


def wide_linear() -> dict:
    """One 8192×8192 linear layer with bias: 67.1M params, AdamW state ≈ 512.06 MB."""
    return {"w": _sds(8192, 8192), "b": _sds(8192)}


def abstract_transformer(vocab: int = 32000, d: int = 512, layers: int = 4,
                         ctx: int = 1024) -> dict:
    """Decoder-only transformer: token and position embeddings, pre-norm blocks
    (layer norms with scale and bias, attention and MLP weights with biases) and
    a final layer norm; the output head is tied to the token embedding. The
    defaults give 29.5M params, 27.6k of them in leaves under 4096 elements."""
    def ln() -> dict:
        return {"scale": _sds(d), "bias": _sds(d)}

    def block() -> dict:
        return {"ln1": ln(), "ln2": ln(),
                "qkv": {"w": _sds(d, 3 * d), "b": _sds(3 * d)},
                "proj": {"w": _sds(d, d), "b": _sds(d)},
                "up": {"w": _sds(d, 4 * d), "b": _sds(4 * d)},
                "down": {"w": _sds(4 * d, d), "b": _sds(d)}}

    return {"embed": _sds(vocab, d), "pos": _sds(ctx, d),
            "blocks": [block() for _ in range(layers)], "ln_f": ln()}


def abstract_transformer_loss(params: dict, tokens: jax.Array) -> jax.Array:
    """Next-token cross-entropy of the `abstract_transformer` parameter tree on `tokens`
    (batch, seq + 1): pre-norm causal attention (heads of 64, at least one) and
    a GELU MLP per block, the output head tied to the token embedding."""
    d = params["embed"].shape[1]
    heads = max(1, d // 64)
    batch, seq = tokens.shape[0], tokens.shape[1] - 1

    def norm(x, p):
        mean = x.mean(-1, keepdims=True)
        return p["scale"] * (x - mean) * jax.lax.rsqrt(x.var(-1, keepdims=True) + 1e-5) \
            + p["bias"]

    def dense(x, p):
        return x @ p["w"] + p["b"]

    mask = jnp.tril(jnp.ones((seq, seq), bool))
    x = params["embed"][tokens[:, :-1]] + params["pos"][:seq]
    for blk in params["blocks"]:
        q, k, v = jnp.split(dense(norm(x, blk["ln1"]), blk["qkv"]), 3, axis=-1)
        q, k, v = (t.reshape(batch, seq, heads, d // heads) for t in (q, k, v))
        att = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(d // heads)
        att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", att, v).reshape(batch, seq, d)
        x = x + dense(out, blk["proj"])
        x = x + dense(jax.nn.gelu(dense(norm(x, blk["ln2"]), blk["up"])), blk["down"])
    logits = norm(x, params["ln_f"]) @ params["embed"].T
    return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()
