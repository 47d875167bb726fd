"""Where a jitted train step's time goes on this machine: per layer, forward and backward.

    python experiments/profile_step.py                          # LeNet, batch 128, impl="auto"
    python experiments/profile_step.py --model resnet8 --impl xla --steps 10

The step is bench.py's (`bench.jcnn_train_step`: ``batched(model)``, ``jax.value_and_grad``,
``optax.adam``, jit with donated state). A few steps run under ``jax.profiler.trace``; the trace is read back with
``jax.profiler.ProfileData`` (no TensorBoard needed) and every executed XLA operation is
attributed to a layer through the compiled program's ``op_name`` metadata: jcnn's combinators
wrap each child in a ``jax.named_scope`` (``serial[3]/Conv/...``, see
``jcnn.layers.child_path``), and autodiff marks the backward pass (``transpose(...)``).

Each operation's time is its wall-clock span per step (from its start to its end, asynchronous
ones included, merged over threads). XLA's CPU runtime runs independent operations concurrently,
so the rows can add up to more than the step; loops (the chunked convs' ``while``) are not
counted themselves, their bodies are.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import glob
import json
import os
import re
import sys
import tempfile
import time

import jax
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (the models and their data, as the benchmark runs them)

CONTAINERS = {"while", "call", "conditional"}
SCOPE = re.compile(r"((?:\w+\[\d+\]/)+)(\w+)")  # serial[3]/ ... /Conv


def build_step(model: str, impl: str, batch: int):
    """A runner of bench.py's jcnn step (the state carried on) and its compiled HLO text."""
    layer = bench.jcnn_lenet(impl) if model == "lenet" else bench.jcnn_resnet8(impl)
    xb, yb = bench.batch_data(model, batch)
    step, args, run = bench.jcnn_train_step(layer, xb, yb, optax.adam(1e-3))
    return run, step.lower(*args).compile().as_text()


def hlo_ops(hlo: str) -> dict[str, dict]:
    """Each instruction of a compiled HLO module's text: opcode, op_name metadata, shape, and
    for a fusion the opcode of its computation's root (``convolution``, ``dot``, ...)."""
    ops, roots, computation = {}, {}, None
    for line in hlo.splitlines():
        head = re.match(r"(?:ENTRY )?%([\w.\-]+) \(.*\{$", line)
        if head:
            computation = head[1]
            continue
        m = re.match(r"\s*(ROOT )?%([\w.\-]+) = (.*)", line)
        if not m:
            continue
        rest = m[3]
        if rest.startswith("("):  # a tuple shape: skip its balanced parentheses
            depth = 0
            for i, ch in enumerate(rest):
                depth += {"(": 1, ")": -1}.get(ch, 0)
                if depth == 0:
                    shape, rest = rest[: i + 1], rest[i + 1 :].lstrip()
                    break
        else:
            shape, _, rest = rest.partition(" ")
        opcode = re.match(r"([\w-]+)\(", rest)
        meta = re.search(r'op_name="([^"]*)"', line)
        calls = re.search(r"calls=%([\w.\-]+)", line)
        op = {
            "opcode": opcode[1] if opcode else "?",
            "op_name": meta[1] if meta else "",
            "shape": re.sub(r"\{[^}]*\}", "", shape),
            "calls": calls[1] if calls else None,
        }
        ops[m[2]] = op
        if m[1] and computation:
            roots[computation] = op
    for op in ops.values():
        root = roots.get(op["calls"]) if op["calls"] else None
        op["root"] = root["opcode"] if root else op["opcode"]
        if not op["op_name"] and root:
            op["op_name"] = root["op_name"]
    return ops


def where(op_name: str) -> tuple[str, str]:
    """(layer path, phase) of an operation from its ``op_name``."""
    phase = "backward" if "transpose(" in op_name else "forward"
    # Transformations wrap the outermost scope: `transpose(jvp(serial[3]))/Conv/...`.
    found = SCOPE.findall(re.sub(r"[\w]+\(|\)", "", op_name))
    if not op_name:
        return ("(no source: made by XLA, e.g. a layout copy)", "-")
    if not found:
        return ("optimizer / loss / glue", phase)
    segments, name = found[-1]
    return (f"{segments.rstrip('/')} {name}", phase)


def spans(trace_dir: str) -> dict[str, list[tuple[int, int]]]:
    """Every executed operation's (start, end) intervals in ns, end markers honoured."""
    from jax.profiler import ProfileData

    (path,) = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
    starts, ends = collections.defaultdict(list), collections.defaultdict(list)
    for plane in ProfileData.from_file(path).planes:
        for line in plane.lines:
            if line.name == "python":
                continue
            for ev in line.events:
                if ev.name.startswith("end: "):
                    ends[ev.name[5:]].append(ev.start_ns)
                elif not ev.name.startswith(("ThunkExecutor", "SlinkyThreadPool")):
                    starts[ev.name].append((ev.start_ns, ev.start_ns + ev.duration_ns))
    out = {}
    for name, evs in starts.items():
        marks = sorted(ends.get(name, ()))
        fixed = []
        for s, e in evs:  # an asynchronous op's event covers its launch; its end marker, the work
            i = bisect.bisect_left(marks, s)
            fixed.append((s, max(e, marks[i]) if i < len(marks) else e))
        out[name] = fixed
    return out


def union_ns(intervals: list[tuple[int, int]]) -> int:
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(intervals):
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                total += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (cur_e - cur_s if cur_e is not None else 0)


def profile(model: str, impl: str, batch: int, steps: int) -> dict:
    run, hlo = build_step(model, impl, batch)
    for _ in range(3):
        run()
    walls = []
    for _ in range(steps):
        t = time.perf_counter()
        run()
        walls.append(time.perf_counter() - t)
    ops = hlo_ops(hlo)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            for _ in range(steps):
                run()
        per_op = spans(d)
    rows = collections.defaultdict(lambda: {"ms": 0.0, "ops": collections.Counter()})
    for name, intervals in per_op.items():
        op = ops.get(name)
        if op is None or op["opcode"] in CONTAINERS:
            continue
        ms = union_ns(intervals) / steps / 1e6
        row = rows[where(op["op_name"])]
        row["ms"] += ms
        row["ops"][f"{name} ({op['root']} {op['shape']})"] += ms
    table = [
        {"layer": layer, "phase": phase, "ms": r["ms"], "top ops": r["ops"].most_common(3)}
        for (layer, phase), r in sorted(rows.items(), key=lambda kv: -kv[1]["ms"])
    ]
    return {
        "model": model,
        "impl": impl,
        "batch": batch,
        "steps": steps,
        "step_ms_median": float(np.median(walls) * 1e3),
        "backend": jax.default_backend(),
        "rows": table,
    }


def markdown(res: dict) -> str:
    lines = [
        f"### Where the {res['model']} step goes (batch {res['batch']}, impl={res['impl']!r},"
        f" backend {res['backend']})",
        "",
        f"Step {res['step_ms_median']:.1f} ms (median of {res['steps']}, untraced). Each row: the"
        " wall-clock span of the layer's operations per step (traced; concurrent operations"
        " overlap, so the rows can add up to more than the step).",
        "",
        "| layer | phase | ms / step | share of step | largest operations (ms) |",
        "|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        if r["ms"] < 0.05:
            continue
        top = ", ".join(f"{n} {ms:.1f}" for n, ms in r["top ops"])
        share = r["ms"] / res["step_ms_median"]
        lines.append(f"| {r['layer']} | {r['phase']} | {r['ms']:.1f} | {share:.0%} | {top} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="lenet", choices=list(bench.MODELS))
    p.add_argument("--impl", default="auto", choices=bench.JCNN_IMPLS)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="traced (and untraced, timed) steps")
    p.add_argument("--json", default=None, help="also write the result here")
    args = p.parse_args(argv)
    res = profile(args.model, args.impl, args.batch, args.steps)
    print(markdown(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
