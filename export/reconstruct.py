"""Rebuild the PyTorch reference from an exported clumpdet ``.onnx`` (its weights are all in there).

A shipped model file is self-contained, so the reference detector it came from
can be recovered from it without the training checkpoint: the bench compares
the bundled ``models/*.onnx`` against *its own* PyTorch reference this way.

How. The exporter copies parameters into initializers, but may reshape,
transpose or concatenate them while constant-folding (a ConvNeXt layer scale
``gamma`` becomes a ``[1, C, 1, 1]`` constant, for example), so names alone do
not identify them. :func:`reconstruct_model` therefore builds the preset's model,
fills every floating-point state-dict element with its own id (consecutive
integers from :data:`ID_BASE`, exact in float32), exports this *probe* with the
same settings as the target (post-processing and proposal budget from the
target's metadata), and reads back, for every initializer of the probe, which
state element each value is. The target's initializer of the same name then
gives that element's trained value. Models with more elements than one probe can
number are done in several passes. An initializer that mixes ids with anything
but a copy (an arithmetic fold, e.g. FrozenBatchNorm's scale) yields values that
are not ids and leaves elements unassigned: that is an error, never a guess.

The probe must be exported by the same torch/onnxscript versions as the target
(initializer names are the exporter's); the target's ``clumpdet.exporter`` metadata
is checked against this environment.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from clumpdet.engine.contracts import ModelMetadata
from clumpdet.export.onnx_export import EXPORTER, export_onnx
from clumpdet.train.checkpoints import preset_from_dict
from clumpdet.train.models import build_model
from clumpdet.train.presets import Preset, get_preset

#: First element id; ids stay below 2**24, where every integer is exact in float32.
ID_BASE = 2**23
#: Ids available to one probe export.
IDS_PER_PASS = 2**24 - ID_BASE
#: Ops whose third input is an optional bias that defaults to zeros.
_BIAS_OPS = frozenset({"Conv", "ConvTranspose", "Gemm"})


def preset_of(path: str | Path) -> tuple[Preset, dict[str, str]]:
    """The preset an exported file was made with, and its raw ``metadata_props``.

    From ``clumpdet.preset_config`` when the file has it (every export since it
    was added); older files: the registered preset named in the metadata, with
    ``input``, ``postprocess``, ``class_names`` and the proposal budget from the
    file. Raises ``ValueError`` naming the file when it is not a clumpdet export.
    """
    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    meta = ModelMetadata.from_props(props, source=str(path))
    if "clumpdet.preset_config" in props:
        return preset_from_dict(json.loads(props["clumpdet.preset_config"])), props
    try:
        base = get_preset(meta.preset)
    except KeyError as err:
        msg = f"reconstruct.py: {path}: {err.args[0]}"
        raise ValueError(msg) from None
    changes = {"input": meta.input, "postprocess": meta.postprocess, "class_names": tuple(meta.class_names)}
    if "clumpdet.proposals" in props:
        changes["rpn_post_nms_top_n_test"] = int(json.loads(props["clumpdet.proposals"]))
    return base.with_options(**changes), props


class _Graph:
    """An exported file's initializers (as arrays) and which node input slot reads each."""

    def __init__(self, path: str | Path) -> None:
        graph = onnx.load(str(path)).graph
        self.arrays = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
        self.node_inputs = {n.name: list(n.input) for n in graph.node}
        self.node_ops = {n.name: n.op_type for n in graph.node}
        self.readers: dict[str, list[tuple[str, int]]] = {}
        for n in graph.node:
            for slot, name in enumerate(n.input):
                if name in self.arrays:
                    self.readers.setdefault(name, []).append((n.name, slot))

    def counterpart(self, probe: "_Graph", name: str, shape: tuple) -> np.ndarray | None:
        """This graph's initializer that plays the part of ``probe``'s ``name``, or ``None``.

        The same name where it exists with that shape. Else the node reading it is
        found here through a sibling input with the same name in both graphs (its
        weight, say), since the exporter's optimiser renames nodes it rewrites and
        merges initializers of equal values under one name; where that node omits
        the input and it is a ``Conv``/``Gemm`` bias, zeros (the optimiser drops
        all-zero biases; ONNX defines an omitted bias as 0).
        """
        if name in self.arrays and self.arrays[name].shape == shape:
            return self.arrays[name]
        for node, slot in probe.readers.get(name, []):
            op = probe.node_ops[node]
            for k, sibling in enumerate(probe.node_inputs[node]):
                if sibling == name or sibling not in self.arrays:
                    continue
                for mine, my_slot in self.readers.get(sibling, []):
                    if my_slot != k or self.node_ops[mine] != op:
                        continue
                    inputs = self.node_inputs[mine]
                    other = inputs[slot] if slot < len(inputs) else ""
                    if other in self.arrays and self.arrays[other].shape == shape:
                        return self.arrays[other]
                    if not other and slot == 2 and op in _BIAS_OPS:
                        return np.zeros(shape, np.float32)
        return None


def reconstruct_model(path: str | Path, *, work_dir: str | None = None):
    """``(model, preset)``: the eval-mode PyTorch reference whose export is ``path``.

    Parameters
    ----------
    path : str or Path
        An ``.onnx`` written by :func:`clumpdet.export.onnx_export.export_onnx`
        (float32; a quantised file has lost its float weights).
    work_dir : str, optional
        Where the probe exports go (a temporary directory, removed afterwards).

    Returns
    -------
    (torchvision.models.detection.FasterRCNN, Preset)
        On the CPU, every state-dict entry restored (non-float buffers as built).

    Raises
    ------
    ValueError
        If the file was exported by another exporter version, or some state
        element cannot be found in it (the message counts and names them).
    """
    path = Path(path)
    preset, props = preset_of(path)
    ours = f"{EXPORTER} torch {torch.__version__.split('+')[0]}"
    theirs = json.loads(props.get("clumpdet.exporter", '""'))
    if theirs != ours:
        msg = (f"reconstruct.py: {path} was exported by {theirs!r}; this environment exports with {ours!r}, "
               "whose initializer names may differ: reconstruct with the exporter that made the file")
        raise ValueError(msg)
    target = _Graph(path)
    model = build_model(preset).eval()
    state = model.state_dict()
    floats = [k for k, v in state.items() if v.is_floating_point()]
    sizes = [state[k].numel() for k in floats]
    restored = {k: np.full(n, np.nan, np.float32) for k, n in zip(floats, sizes)}
    starts = np.concatenate([[0], np.cumsum(sizes)])
    with tempfile.TemporaryDirectory(prefix="clumpdet-probe-", dir=work_dir) as tmp:
        for lo in range(0, int(starts[-1]), IDS_PER_PASS):
            hi = min(lo + IDS_PER_PASS, int(starts[-1]))
            probe = _probe_state(state, floats, starts, lo, hi)
            model.load_state_dict(probe)
            out = export_onnx(model, preset, Path(tmp) / "probe.onnx", postprocess=preset.postprocess,
                              proposals=preset.rpn_post_nms_top_n_test, check=False)
            _assign(_Graph(out), target, floats, starts, lo, hi, restored, path)
            done = [k for k, a, b in zip(floats, starts[:-1], starts[1:]) if b <= hi]  # numbered by now
            missing = [k for k in done if np.isnan(restored[k]).any()]
            if missing:  # said after the first pass that shows it, not after all of them
                msg = (f"reconstruct.py: {path}: {len(missing)} state entries are not plain copies in the file "
                       f"(e.g. {missing[:3]}); this model cannot be rebuilt from its export")
                raise ValueError(msg)
    final = dict(state)
    for k in floats:
        final[k] = torch.from_numpy(restored[k].reshape(state[k].shape)).to(state[k].dtype)
    model.load_state_dict(final, strict=True)
    return model.eval(), preset


def _probe_state(state: dict, floats: list[str], starts: np.ndarray, lo: int, hi: int) -> dict:
    """State dict whose elements with global index in ``[lo, hi)`` hold ``ID_BASE + index - lo``; others 0."""
    probe = dict(state)
    for k, s in zip(floats, starts[:-1]):
        n = state[k].numel()
        flat = np.zeros(n, np.float32)
        a, b = max(lo, int(s)), min(hi, int(s) + n)
        if a < b:
            flat[a - s:b - s] = ID_BASE + np.arange(a - lo, b - lo, dtype=np.float64)
        probe[k] = torch.from_numpy(flat.reshape(state[k].shape))
    return probe


def _assign(probe: _Graph, target: _Graph, floats: list[str], starts: np.ndarray,
            lo: int, hi: int, restored: dict[str, np.ndarray], path: Path) -> None:
    """Copy target values into ``restored`` wherever the probe's initializer holds an id of this pass."""
    for name, arr in probe.arrays.items():
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        flat = arr.astype(np.float64).ravel()
        is_id = (flat >= ID_BASE) & (flat < ID_BASE + (hi - lo)) & (flat == np.round(flat))
        if not is_id.any():
            continue
        theirs = target.counterpart(probe, name, arr.shape)
        if theirs is None:
            msg = (f"reconstruct.py: {path} has no initializer {name!r} of shape {arr.shape} (nor one in its "
                   "place): it was not exported from this preset with these settings")
            raise ValueError(msg)
        gidx = (flat[is_id] - ID_BASE).astype(np.int64) + lo
        values = theirs.astype(np.float32).ravel()[is_id]
        which = np.searchsorted(starts, gidx, side="right") - 1
        for w in np.unique(which):
            sel = which == w
            restored[floats[w]][gidx[sel] - starts[w]] = values[sel]


def main(argv: list[str] | None = None) -> int:
    """``python -m clumpdet.export.reconstruct MODEL.onnx --out STEM``: write our checkpoint of its weights."""
    import argparse

    from clumpdet.engine.hashing import sha256_file
    from clumpdet.train.checkpoints import save_checkpoint

    parser = argparse.ArgumentParser(description="Rebuild the PyTorch checkpoint of an exported clumpdet model")
    parser.add_argument("model", help="exported .onnx (float32)")
    parser.add_argument("--out", required=True, help="checkpoint stem: writes STEM.safetensors and STEM.json")
    args = parser.parse_args(argv)
    model, preset = reconstruct_model(args.model)
    weights, config = save_checkpoint(model, preset, args.out,
                                      extra={"source": f"weights read back from {args.model}",
                                             "source_sha256": sha256_file(args.model)})
    print(f"wrote {weights} and {config}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
