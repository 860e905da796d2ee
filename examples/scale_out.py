"""Train a small transformer data- and FSDP-parallel on N devices, with any optimizer.

Single process (CPU devices simulated with XLA_FLAGS, set here for you):

    python examples/scale_out.py --devices 8

Several processes on this machine, one per group of devices, talking over
127.0.0.1 through `jax.distributed` (the same code runs on a GPU/TPU cluster,
where only the `jax.distributed.initialize` arguments change):

    python examples/scale_out.py --devices 8 --processes 2

Every parameter whose leading axis divides by the device count is sharded along
it (FSDP); the batch is split over the same axis (data parallel). The optimizer
state follows: param-shaped buffers are sharded like their params, the
per-tensor scalars of STAM/STAMLite are replicated. Prints the loss and the
optimizer-state bytes each device holds.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args: argparse.Namespace) -> int:
    """Starts one worker process per device group; tears all down on any failure."""
    port = _free_port()
    per = args.devices // args.processes
    procs = []
    for i in range(args.processes):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={per}")
        cmd = [sys.executable, __file__, *sys.argv[1:], "--worker-id", str(i),
               "--port", str(port)]
        procs.append(subprocess.Popen(cmd, env=env))
    deadline = time.monotonic() + args.timeout
    try:
        while any(p.poll() is None for p in procs):
            if time.monotonic() > deadline:
                print(f"scale_out: timed out after {args.timeout}s", file=sys.stderr)
                return 124
            if any(p.poll() not in (None, 0) for p in procs):
                print("scale_out: a worker failed", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return max(p.returncode for p in procs)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def worker(args: argparse.Namespace) -> int:
    import jax

    if args.processes > 1:
        addr = f"127.0.0.1:{args.port}"
        jax.distributed.initialize(coordinator_address=addr, coordinator_bind_address=addr,
                                   num_processes=args.processes, process_id=args.worker_id)
    import numpy as np
    import optax
    from jax.experimental import multihost_utils
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    from stam_optimizer.benchmarks.measure.speed import transformer_task
    from stam_optimizer.benchmarks.programme import registry

    n = jax.device_count()
    if n != args.devices:
        print(f"scale_out: expected {args.devices} devices, found {n}", file=sys.stderr)
        return 2
    mesh = jax.make_mesh((n,), ("fsdp",), axis_types=(AxisType.Auto,))
    batch = 2 * n
    params, loss_fn, tokens = transformer_task(jax.random.PRNGKey(0), batch=batch,
                                                return_tokens=True)

    def spec(x):
        return P("fsdp") if x.ndim and x.shape[0] % n == 0 else P()

    def shard(tree):  # every process holds the full host copy; take its own part
        return jax.tree.map(
            lambda x: jax.make_array_from_callback(
                x.shape, NamedSharding(mesh, spec(x)), lambda idx, x=x: np.asarray(x)[idx]),
            tree)

    params = shard(params)
    tx = registry.get(args.optimizer, args.lr)
    state = tx.init(params)
    rng = np.random.default_rng(1)

    def step(params, state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    step = jax.jit(step, donate_argnums=(0, 1))
    lead = jax.process_index() == 0
    for t in range(args.steps):
        # a learnable stream: each token is 5·previous + 1 (mod 256), from a random start
        host = np.empty(tokens.shape, np.int32)
        host[:, 0] = rng.integers(0, 256, size=tokens.shape[0])
        for j in range(1, tokens.shape[1]):
            host[:, j] = (host[:, j - 1] * 5 + 1) % 256
        toks = shard(host)
        params, state, loss = step(params, state, toks)
        if lead and (t % max(1, args.steps // 5) == 0 or t == args.steps - 1):
            print(f"step {t:4d}  loss {float(loss):.4f}", flush=True)
    per_device: dict[int, int] = {}
    for leaf in jax.tree.leaves(state):
        for s in leaf.addressable_shards:
            per_device[s.device.id] = per_device.get(s.device.id, 0) + s.data.nbytes
    total = sum(x.nbytes for x in jax.tree.leaves(state))
    for dev, nbytes in sorted(per_device.items()):
        print(f"process {jax.process_index()} device {dev}: optimizer state {nbytes / 1e6:.3f} MB"
              f" of {total / 1e6:.3f} MB", flush=True)
    if args.out:
        full = multihost_utils.process_allgather(params, tiled=True)
        np.savez(f"{args.out}.{jax.process_index()}.npz",
                 *[np.asarray(x) for x in jax.tree.leaves(full)])
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=8, help="total devices (>= 1)")
    ap.add_argument("--processes", type=int, default=1, help="processes; must divide --devices")
    ap.add_argument("--optimizer", default="stam_full", help="a name of `stam-bench list`")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--timeout", type=float, default=600, help="seconds, multi-process only")
    ap.add_argument("--out", default="", help="write final params to OUT.<process>.npz")
    ap.add_argument("--worker-id", type=int, default=-1, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.devices < 1 or args.processes < 1 or args.devices % args.processes:
        ap.error("--devices must be >= 1 and divisible by --processes")
    if args.processes > 1 and args.worker_id < 0:
        return launch(args)
    if args.processes == 1:
        flag = f"--xla_force_host_platform_device_count={args.devices}"
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flag).strip()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return worker(args)


if __name__ == "__main__":
    sys.exit(main())
