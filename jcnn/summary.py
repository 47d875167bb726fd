"""`summary`: a per-layer table of a model (shapes, params, FLOPs, memory, receptive fields).

Everything is computed from shapes with `jcnn.shapes` arithmetic: no arrays are allocated and
nothing is compiled (the model's ``init`` is traced once, abstractly, to validate it). The table
is a `jcnn.layers.fold` over the model: each combinator's ``route`` sends the fold through its
children, each leaf's ``info`` gives its row (its `jcnn.layers.LayerInfo`, with a typed
receptive-field rule). Nothing here knows any combinator by name.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax.numpy as jnp

from jcnn.layers._examples import input_shape_of, is_shape, numel
from jcnn.layers.base import Layer
from jcnn.layers.info import Elementwise, Global, LayerInfo, Merge, RFRule, Unknown, Windows
from jcnn.layers.tree import _abstract_init, fold
from jcnn.shapes import ReceptiveField, receptive_field_step

__all__ = ["summary", "Summary"]

# The receptive field the fold carries: one ReceptiveField per spatial dim, or one of these.
_GLOBAL, _UNKNOWN = Global(), Unknown()


class _Branches(tuple):
    """The receptive fields of a tuple of outputs (after `parallel`)."""


class _Flow(NamedTuple):
    """What the summary's fold carries from layer to layer: a shape and its receptive field."""

    shape: Any
    rf: Any


def _shape(flow):
    return flow.shape if isinstance(flow, _Flow) else tuple(_shape(f) for f in flow)


def _rf(flow):
    return flow.rf if isinstance(flow, _Flow) else _Branches(_rf(f) for f in flow)


def _initial_rf(input_shape) -> tuple[ReceptiveField, ...]:
    """The receptive field of the input itself: one pixel per spatial dim (all dims but the last)."""
    return tuple(ReceptiveField(1, 1, 0.0) for _ in range(max(len(input_shape) - 1, 0)))


def _step(rf, rule: RFRule):
    """Receptive field after a layer with the given `LayerInfo.rf` rule."""
    if isinstance(rule, Merge):
        return _union(rf if isinstance(rf, _Branches) else (rf,))
    if isinstance(rule, Unknown) or isinstance(rf, Unknown):
        return _UNKNOWN
    if isinstance(rule, Elementwise):
        return rf
    if isinstance(rule, Global) or isinstance(rf, Global):
        return _GLOBAL
    if not isinstance(rule, Windows) or isinstance(rf, _Branches) or len(rf) != len(rule.windows):
        return _UNKNOWN
    return tuple(
        receptive_field_step(r, w.kernel_size, w.stride, w.pad_lo, w.dilation, transpose=w.transpose)
        for r, w in zip(rf, rule.windows)
    )


def _union(rfs):
    """The field covering all of ``rfs`` (branches merged by Add, Concat or a residual)."""
    flat = []
    for r in rfs:
        flat.extend(r if isinstance(r, _Branches) else (r,))
    if any(isinstance(r, Unknown) for r in flat):
        return _UNKNOWN
    if any(isinstance(r, Global) for r in flat):
        return _GLOBAL
    if len({len(r) for r in flat}) != 1:
        return _UNKNOWN
    out = []
    for per_dim in zip(*flat):
        if len({r.jump for r in per_dim}) != 1:
            return _UNKNOWN  # fields on different grids: no single (size, jump, start)
        lo = min(r.start - (r.size - 1) / 2 for r in per_dim)
        hi = max(r.start + (r.size - 1) / 2 for r in per_dim)
        out.append(ReceptiveField(_num(hi - lo + 1), per_dim[0].jump, (lo + hi) / 2))
    return tuple(out)


def _num(x):
    """An int when the value is whole, else the float."""
    return int(x) if float(x) == int(x) else x


def _rf_value(rf) -> Any:
    """Machine-readable receptive field: list of dicts per spatial dim, "global" or None."""
    if isinstance(rf, _Branches):
        return [_rf_value(r) for r in rf]
    if isinstance(rf, Unknown):
        return None
    if isinstance(rf, Global):
        return "global"
    return [{"size": _num(r.size), "jump": _num(r.jump), "start": _num(r.start)} for r in rf]


class _Rows:
    """The fold's leaf step: one row per leaf, the flow carried on."""

    def __init__(self, itemsize: int):
        self.itemsize = itemsize
        self.rows: list[dict] = []

    def __call__(self, path: tuple[str, ...], layer: Layer, flow) -> _Flow:
        shape, rf = _shape(flow), _rf(flow)
        if layer.info is None:  # a user layer: shapes and params from its init, nothing more
            out, count = _abstract_init(layer, shape)
            self.row(path, repr(layer), LayerInfo(out, count, None), _UNKNOWN)
            return _Flow(out, _UNKNOWN)
        info = layer.info(shape)
        out_rf = _step(rf, info.rf)
        self.row(path, repr(layer), info, out_rf)
        return _Flow(info.output_shape, out_rf)

    def row(self, path, description: str, info: LayerInfo, rf) -> None:
        out = info.output_shape
        self.rows.append(
            {
                "path": ".".join(path),
                "layer": description,
                "output_shape": tuple(out) if is_shape(out) else tuple(tuple(s) for s in out),
                "params": info.params,
                "flops": info.flops,
                "activation_bytes": numel(out) * self.itemsize,
                "receptive_field": _rf_value(rf),
                "padding": None if info.padding is None else tuple(tuple(p) for p in info.padding),
                "warning": info.warning,
            }
        )


def summary(model: Layer, input_shape, *, dtype=jnp.float32) -> Summary:
    """A per-layer table of ``model`` on one example of ``input_shape``, computed from shapes.

    One row per layer, parameter-free ones included; a layer inside a combinator is named by
    its path, e.g. ``serial[2].parallel[0]`` (child 0 of the parallel that is child 2 of the
    top-level serial), ``serial[4].residual.body.serial[1]``; a residual's addition is a row
    of its own (``....residual.add``). Columns, all per example:

    - ``output_shape``: the layer's output (a tuple of shapes after `parallel`).
    - ``params``: learnable parameters (kernels, biases, norm scales and shifts).
    - ``flops``: forward pass in evaluation mode. A multiply-add is 2 FLOPs; bias adds are
      counted (1 per output element); pooling 1 per window element per output; activations
      1 per element (LogSoftmax / Softmax 3); BatchNorm 2 per element (running statistics
      folded into a scale and a shift); LayerNorm / GroupNorm 5 per element plus 1 each for
      scale and shift; Add ``n - 1`` per element; Flatten, Dropout, Identity, Concat 0.
    - ``activation_bytes``: bytes of the layer's output, assuming every activation has
      ``dtype``; the total is what one example's forward pass keeps for backprop.
    - ``receptive_field``: per spatial dim ``(size, jump, start)`` in input pixels (Araujo et
      al., Distill 2019): ``size`` pixels seen by one output unit (dilation, stride, padding
      aware; through conv, pooling and transposed conv, whose field is the largest over its
      output phases), ``jump`` the input distance between neighbouring units, ``start`` the
      centre of the first unit's field (input pixel 0 is at 0.0; negative lies in the
      padding). ``"global"`` once every unit sees the whole input (after Flatten, a Dense on
      a vector, a global pool). Branches merged by Add / Concat / residual take the union.
      Normalisation layers count as per-pixel (their statistics are ignored). ``None`` where
      it cannot be derived (a custom layer without ``info``, or a rule `jcnn.layers.Unknown`).
    - ``padding``: the concrete ``(lo, hi)`` padding per spatial dim (``"SAME"`` resolved; for
      ConvTranspose, PyTorch's crop).
    - ``warning``: `jcnn.shapes.fit_warning`'s words where a stride leaves the last input pixels
      unread (pixels a stride larger than the window skips between windows are not warned about).
    - ``path``: where the layer sits; these are the paths `jcnn.layers.features` takes.

    A combinator, built in or your own, shows its children's rows: its ``route`` sends the
    summary through them (see `jcnn.layers.Layer` and `jcnn.layers.serial`). A layer without
    ``info`` is one row from its abstract ``init`` (params and output shape only).

    Args:
      model: a `Layer` with per-example shapes (not ``batched(model)``).
      input_shape: the shape of one example, e.g. ``(28, 28, 1)``.
      dtype: the activation dtype for ``activation_bytes`` (and ``param_bytes``).

    Returns:
      A `Summary`: ``rows`` (a list of dicts with the keys above plus ``path`` and
      ``layer``), ``totals``, ``str()`` for the table, ``to_dict()``.

    Raises:
      ShapeError / ValueError / TypeError: the model does not fit ``input_shape`` (the same
        error, with the same path, as ``model.init``), or it is ``batched(model)``.

    The lecture's LeNet:

    >>> from jcnn.layers import Conv, Dense, Flatten, MaxPool, Relu, serial
    >>> lenet = serial(Conv(20, 5, padding=2), Relu(), MaxPool(2), Conv(50, 5, padding=2), Relu(),
    ...                MaxPool(2), Flatten(), Dense(500), Relu(), Dense(10))
    >>> table = summary(lenet, (28, 28, 1))
    >>> [row["params"] for row in table.rows if row["params"]]
    [520, 25050, 1225500, 5010]
    >>> table.totals["params"]
    1256080
    >>> table.rows[5]["receptive_field"][0]
    {'size': 16, 'jump': 4, 'start': 1.5}
    """
    if not isinstance(model, Layer):
        raise TypeError(f"summary: `model` must be a Layer, got {model!r}.")
    shape = input_shape_of(input_shape, "summary")
    itemsize = jnp.dtype(dtype).itemsize
    # Validate the whole model the way init does (same errors, same paths), abstractly.
    out_shape, param_count = _abstract_init(model, shape)
    rows = _Rows(itemsize)
    fold(model, _Flow(shape, _initial_rf(shape)), rows)
    rows = rows.rows
    flops = [r["flops"] for r in rows]
    totals = {
        "params": param_count,
        "flops": None if any(f is None for f in flops) else sum(flops),
        "activation_bytes": sum(r["activation_bytes"] for r in rows),
        "param_bytes": param_count * itemsize,
        "output_shape": out_shape,
    }
    return Summary(shape, jnp.dtype(dtype).name, rows, totals)


class Summary:
    """The table `summary` returns: ``rows`` (list of dicts), ``totals`` (dict), ``str()``.

    >>> from jcnn.layers import Dense
    >>> table = summary(Dense(3), (4,))
    >>> table.rows[0]["params"], table.totals["flops"], len(table)
    (15, 27, 1)
    """

    def __init__(self, input_shape, dtype: str, rows: list[dict], totals: dict):
        self.input_shape = tuple(input_shape)
        self.dtype = dtype
        self.rows = rows
        self.totals = totals

    def to_dict(self) -> dict:
        """Plain data: ``{"input_shape", "dtype", "rows": [...], "totals": {...}}``."""
        return {
            "input_shape": self.input_shape,
            "dtype": self.dtype,
            "rows": [dict(r) for r in self.rows],
            "totals": dict(self.totals),
        }

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def __getitem__(self, i):
        return self.rows[i]

    def __repr__(self) -> str:
        return self.__str__()

    def __str__(self) -> str:
        header = [
            "path",
            "layer",
            "output shape",
            "params",
            "FLOPs",
            "act. bytes",
            "RF size",
            "jump",
            "start",
        ]
        header += ["padding", "warn"]
        right = {"params", "FLOPs", "act. bytes"}
        lines, notes = [], []
        for r in self.rows:
            size, jump, start = _rf_columns(r["receptive_field"])
            warn = ""
            if r["warning"]:
                where = f"{r['path']} {r['layer']}" if r["path"] else r["layer"]
                notes.append(f"[{len(notes) + 1}] {where}: {r['warning']}")
                warn = f"[{len(notes)}]"
            lines.append(
                [
                    r["path"] or "-",
                    _clip(r["layer"], 40),
                    _shape_str(r["output_shape"]),
                    _int(r["params"]),
                    _int(r["flops"]),
                    _int(r["activation_bytes"]),
                    size,
                    jump,
                    start,
                    _pad_str(r["padding"]),
                    warn,
                ]
            )
        t = self.totals
        total = ["total", "", _shape_str(t["output_shape"]), _int(t["params"]), _int(t["flops"])]
        total += [_int(t["activation_bytes"]), "", "", "", "", ""]
        widths = [max(len(str(c)) for c in col) for col in zip(header, *lines, total)]

        def fmt(cells):
            out = [c.rjust(w) if h in right else c.ljust(w) for c, w, h in zip(cells, widths, header)]
            return "  ".join(out).rstrip()

        rule = "-" * len(fmt(header))
        text = [
            f"summary: input {self.input_shape} per example, {self.dtype} activations;"
            " FLOPs: multiply-add = 2, bias adds counted",
            rule,
            fmt(header),
            rule,
        ]
        text += [fmt(line) for line in lines]
        text += [rule, fmt(total)]
        text.append(f"params: {_int(t['params'])} ({_bytes(t['param_bytes'])})")
        if notes:
            text += ["", "warnings (a stride leaves input pixels unread):"] + notes
        return "\n".join(text)


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 3] + "..."


def _int(v) -> str:
    return "?" if v is None else f"{v:,}"


def _bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _shape_str(shape) -> str:
    if is_shape(shape):
        return str(tuple(shape))
    return " | ".join(_shape_str(s) for s in shape)


def _pad_str(padding) -> str:
    if padding is None:
        return ""
    return " ".join(f"({lo},{hi})" for lo, hi in padding)


def _g(x) -> str:
    return f"{x:g}"


def _rf_columns(rf) -> tuple[str, str, str]:
    if rf is None:
        return "?", "?", "?"
    if rf == "global":
        return "global", "", ""
    if rf and (isinstance(rf[0], list) or rf[0] is None or rf[0] == "global"):
        cols = [_rf_columns(r) for r in rf]  # branches after parallel
        return (
            " | ".join(c[0] for c in cols),
            " | ".join(c[1] for c in cols),
            " | ".join(c[2] for c in cols),
        )
    if not rf:
        return "-", "-", "-"
    return (
        "x".join(_g(d["size"]) for d in rf),
        "x".join(_g(d["jump"]) for d in rf),
        ",".join(_g(d["start"]) for d in rf),
    )
