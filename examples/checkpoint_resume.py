"""Train with periodic checkpoints; kill the run at any point; run it again to resume.

    python examples/checkpoint_resume.py --dir /tmp/run --steps 40 --every 10

Every `--every` steps, params and optimizer state are saved with orbax's
`CheckpointManager` (needs `pip install 'stam-optimizer[checkpoint]'`). A save
is written into a temporary directory and renamed when complete, so a process
killed while saving leaves the previous checkpoint as the latest one. Started
again with the same `--dir`, the script restores the latest checkpoint and
continues; the data of step t depends only on t, so the resumed run ends with
the same parameters as one that was never interrupted (bit for bit on the same
devices). `--devices` may differ between runs: the state is restored onto the
new mesh (see `stam_optimizer.checkpoint`).

Debug flags, to test the above deterministically: `--die-at-step N` sends
SIGKILL to this process before step N; `--die-while-saving N` sends it while
the checkpoint of step N is being finalised (all its files written, not yet
renamed into place).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _dying_temporary_path(ocp, step: int):
    """orbax's atomic-rename path, killing the process instead of finalising `step`."""
    base = ocp.path.atomicity.AtomicRenameTemporaryPath

    class DieWhileSaving(base):
        async def finalize(self, *args, **kwargs):
            if self.get_final().name == str(step):
                _die()
            return await super().finalize(*args, **kwargs)

    return DieWhileSaving


def run(args: argparse.Namespace) -> int:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import orbax.checkpoint as ocp
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    from stam_optimizer import checkpoint
    from stam_optimizer.benchmarks.programme import registry

    n = jax.device_count()
    mesh = jax.make_mesh((n,), ("fsdp",), axis_types=(AxisType.Auto,))
    shapes = {"w1": (8, 32), "b1": (32,), "w2": (32, 16), "b2": (16,), "w3": (16, 1)}

    def sharding(shape):
        return NamedSharding(mesh, P("fsdp") if shape[0] % n == 0 else P())

    abstract = {k: jax.ShapeDtypeStruct(s, jnp.float32, sharding=sharding(s))
                for k, s in shapes.items()}
    tx = registry.get(args.optimizer, args.lr)

    def batch(t: int):  # the data of step t depends on t only: resuming replays it
        rng = np.random.default_rng(1000 + t)
        x = rng.normal(size=(32, 8)).astype(np.float32)
        y = np.sin(x @ np.linspace(-1, 1, 8, dtype=np.float32))[:, None]
        return jnp.asarray(x), jnp.asarray(y)

    def loss_fn(p, x, y):
        h = jnp.tanh(x @ p["w1"] + p["b1"])
        h = jnp.tanh(h @ p["w2"] + p["b2"])
        return jnp.mean((h @ p["w3"] - y) ** 2)

    @jax.jit
    def step(params, state, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    options = ocp.CheckpointManagerOptions(
        max_to_keep=args.keep, cleanup_tmp_directories=True,
        temporary_path_class=(_dying_temporary_path(ocp, args.die_while_saving)
                              if args.die_while_saving is not None else None))
    with ocp.CheckpointManager(os.path.abspath(args.dir), options=options) as manager:
        start = manager.latest_step()
        if start is None:
            rng = np.random.default_rng(0)
            params = {k: jax.device_put(0.5 * rng.normal(size=s).astype(np.float32),
                                        sharding(s)) for k, s in shapes.items()}
            state = jax.device_put(tx.init(params), checkpoint.state_shardings(tx, params))
            start = 0
        else:
            restored = manager.restore(
                start, args=ocp.args.StandardRestore(checkpoint.restore_targets(tx, abstract)))
            params, state = restored["params"], restored["opt_state"]
            print(f"resumed from step {start} on {n} device(s)", flush=True)
        for t in range(start, args.steps):
            if t == args.die_at_step:
                manager.wait_until_finished()  # a deterministic point: no save in flight
                _die()
            params, state, loss = step(params, state, *batch(t))
            if (t + 1) % args.every == 0 or t + 1 == args.steps:
                # asynchronous: the arrays are copied now, written in the background
                manager.save(t + 1, args=ocp.args.StandardSave(
                    {"params": params, "opt_state": state}))
                print(f"step {t + 1:4d}  loss {float(loss):.5f}  (checkpoint)", flush=True)
        manager.wait_until_finished()
    if args.out:
        np.savez(args.out, **{k: np.asarray(v) for k, v in params.items()})
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", required=True, help="checkpoint directory (created if missing)")
    ap.add_argument("--steps", type=int, default=40, help="total training steps (>= 1)")
    ap.add_argument("--every", type=int, default=10, help="checkpoint interval in steps (>= 1)")
    ap.add_argument("--keep", type=int, default=2, help="checkpoints kept (>= 1)")
    ap.add_argument("--optimizer", default="stam_lite", help="a name of `stam-bench list`")
    ap.add_argument("--lr", type=float, default=1e-2, help="learning rate")
    ap.add_argument("--devices", type=int, default=1, help="simulated CPU devices (>= 1)")
    ap.add_argument("--out", default="", help="write the final params to this .npz file")
    ap.add_argument("--die-at-step", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--die-while-saving", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("steps", "every", "keep", "devices"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    flag = f"--xla_force_host_platform_device_count={args.devices}"
    os.environ["XLA_FLAGS"] = " ".join(
        [f for f in os.environ.get("XLA_FLAGS", "").split()
         if not f.startswith("--xla_force_host_platform_device_count")] + [flag])
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
