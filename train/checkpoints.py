"""Reading and writing detector weights without ever unpickling arbitrary objects.

Two formats:

*Published* (Popp et al. 2024)
    A ``.pth`` state dict saved from an ``nn.DataParallel``-wrapped torchvision
    ``fasterrcnn_resnet50_fpn(num_classes=3)``: every key is prefixed
    ``module.``. Read with ``torch.load(path, map_location="cpu",
    weights_only=True)``, which refuses pickles that carry anything but
    tensors and plain containers.
*Ours*
    ``<stem>.safetensors`` (the model's state dict) plus ``<stem>.json``, a
    config naming the preset and holding its full definition, so a checkpoint
    trained with a modified preset (``Preset.with_options``) rebuilds exactly.

Also :func:`sha256_file`, the digest exported models record as their source.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as _load_safetensors
from safetensors.torch import save_file as _save_safetensors

from clumpdet.engine.contracts import PostProcessConfig, input_spec_from_dict
from clumpdet.engine.hashing import sha256_file
from clumpdet.train.presets import POPP2024, Preset, get_preset

if TYPE_CHECKING:
    from torchvision.models.detection import FasterRCNN

#: ``format`` value of our checkpoint config JSON.
CHECKPOINT_FORMAT = "clumpdet-checkpoint"
#: Version of our checkpoint config layout.
CHECKPOINT_FORMAT_VERSION = 1

PathLike = str | os.PathLike


def check_state_dict(expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], what: str) -> None:
    """Raise ``ValueError`` starting with ``what`` unless ``state`` has exactly ``expected``'s keys and shapes.

    The message counts missing, unexpected and wrongly shaped keys, with up to three examples each.
    """
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    bad_shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or bad_shapes:
        msg = (
            f"{what}: {len(missing)} missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
            f"(e.g. {unexpected[:3]}), {len(bad_shapes)} with wrong shapes (e.g. {bad_shapes[:3]})"
        )
        raise ValueError(msg)


def read_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never unpickling objects.

    Parameters
    ----------
    path : str or os.PathLike
        A ``.safetensors`` file, or a file written by ``torch.save`` holding a
        ``{name: tensor}`` mapping (or a dict with such a mapping under
        ``"state_dict"``, as PyTorch Lightning checkpoints have).

    Returns
    -------
    dict of str to torch.Tensor
        On the CPU, keys as stored (prefixes such as ``module.`` untouched).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the file holds arbitrary Python objects (``torch.load`` with
        ``weights_only=True`` refuses it) or no tensor mapping.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"checkpoints.py: weights file {str(path)!r} does not exist"
        raise FileNotFoundError(msg)
    if path.suffix == ".safetensors":
        try:
            return _load_safetensors(str(path), device="cpu")
        except SafetensorError as err:
            msg = f"checkpoints.py: {str(path)!r} is not a readable safetensors file: {err}"
            raise ValueError(msg) from err
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        reason = next((ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln), "unsupported content")
        reason = reason.split(". Please use")[0].removeprefix("WeightsUnpickler error: ")
        msg = (
            f"checkpoints.py: {str(path)!r} is not a plain tensor state dict: torch.load(weights_only=True) "
            f"refused it ({reason}). It may execute code when unpickled; if you trust it, "
            "re-save only its state dict (torch.save(obj['state_dict'] or model.state_dict(), ...)) "
            "in a separate, trusted environment."
        )
        raise ValueError(msg) from err
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        kind = type(obj).__name__
        keys = list(obj)[:5] if isinstance(obj, dict) else []
        msg = f"checkpoints.py: {str(path)!r} holds a {kind} (keys {keys}), not a non-empty {{name: tensor}} state dict"
        raise ValueError(msg)
    return {str(k): v for k, v in obj.items()}


def strip_prefix(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Remove ``prefix`` from every key; keys without it are an error (mixed dicts are corrupt)."""
    missing = [k for k in state_dict if not k.startswith(prefix)]
    if missing:
        msg = f"checkpoints.py: {len(missing)} keys lack the prefix {prefix!r}, e.g. {missing[:3]}"
        raise ValueError(msg)
    return {k[len(prefix):]: v for k, v in state_dict.items()}


def read_published_state_dict(path: PathLike) -> dict[str, torch.Tensor]:
    """Read a published Popp et al. (2024) checkpoint and strip the ``nn.DataParallel`` prefix.

    Keys come back as ``torchvision`` names (``backbone.body.conv1.weight``,
    ``roi_heads.box_predictor.cls_score.weight``, ...). A state dict saved
    without ``nn.DataParallel`` (no ``module.`` on any key) is returned as is.
    """
    state = read_state_dict(path)
    if any(k.startswith("module.") for k in state):
        state = strip_prefix(state, "module.")
    return state


# --------------------------------------------------------------------------- presets <-> JSON


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    """JSON-ready dict of every field of ``preset`` (nested contracts included)."""
    return dataclasses.asdict(preset)


def preset_from_dict(data: dict[str, Any]) -> Preset:
    """Inverse of :func:`preset_to_dict` (JSON lists turned back into tuples)."""
    d = dict(data)
    d["input"] = input_spec_from_dict(d["input"])
    d["postprocess"] = PostProcessConfig(**d["postprocess"])
    for key in ("class_names", "anchor_sizes", "aspect_ratios", "feature_strides"):
        if key in d:
            d[key] = tuple(d[key])
    return Preset(**d)


# --------------------------------------------------------------------------- our format


def _paths(path: PathLike) -> tuple[Path, Path]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")


def save_checkpoint(
    model: torch.nn.Module, preset: Preset, path: PathLike, *, extra: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``model``'s weights as safetensors plus a config JSON naming ``preset``.

    Parameters
    ----------
    model : torch.nn.Module
        The detector (e.g. from :func:`clumpdet.train.models.build_model`);
        an ``nn.DataParallel`` wrapper is unwrapped.
    preset : Preset
        The preset the model was built from; stored in full.
    path : str or os.PathLike
        Output stem; ``.safetensors`` / ``.json`` suffixes are replaced.
    extra : dict, optional
        JSON-serialisable notes (training data, epochs, metrics) stored under ``"extra"``.

    Returns
    -------
    (Path, Path)
        The ``.safetensors`` and ``.json`` paths written.
    """
    if isinstance(model, torch.nn.DataParallel):
        model = model.module
    weights_path, config_path = _paths(path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _save_safetensors(state, str(weights_path), metadata={"format": CHECKPOINT_FORMAT, "preset": preset.name})
    config = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "preset": preset.name,
        "preset_config": preset_to_dict(preset),
        "weights": weights_path.name,
        "weights_sha256": sha256_file(weights_path),
        "extra": extra or {},
    }
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return weights_path, config_path


def read_checkpoint_config(path: PathLike) -> tuple[Preset, dict[str, Any]]:
    """Read the config JSON of one of our checkpoints; return its preset and the whole config."""
    _, config_path = _paths(path)
    if not config_path.is_file():
        msg = f"checkpoints.py: config {str(config_path)!r} of checkpoint {str(path)!r} is missing"
        raise FileNotFoundError(msg)
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        msg = f"checkpoints.py: {str(config_path)!r} is not valid JSON: {err}"
        raise ValueError(msg) from err
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        msg = f"checkpoints.py: {str(config_path)!r} is not a clumpdet checkpoint config (format != {CHECKPOINT_FORMAT!r})"
        raise ValueError(msg)
    if config.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        msg = f"checkpoints.py: {str(config_path)!r} has a newer format ({config['format_version']}); upgrade clumpdet"
        raise ValueError(msg)
    if "preset_config" in config:
        preset = preset_from_dict(config["preset_config"])
    else:
        preset = get_preset(config["preset"])
    return preset, config


def load_model(checkpoint: PathLike, preset: Preset | None = None) -> tuple["FasterRCNN", Preset]:
    """Build the detector and load a checkpoint of either format into it, strictly.

    Parameters
    ----------
    checkpoint : str or os.PathLike
        Ours (``.safetensors`` with its ``.json``) or a published ``.pth``
        state dict (``module.`` prefix optional).
    preset : Preset, optional
        For ours: must have the name stored in the config if given (the stored
        definition is used). For a published file: the architecture to build;
        default :data:`~clumpdet.train.presets.POPP2024`.

    Returns
    -------
    (FasterRCNN, Preset)
        The model in eval mode on the CPU, and the preset it was built from.
    """
    from clumpdet.train.models.reference import build_model  # here: models import this module

    path = Path(checkpoint)
    if path.suffix in (".safetensors", ".json"):
        stored, _ = read_checkpoint_config(path)
        if preset is not None and preset.name != stored.name:
            msg = f"checkpoints.py: {str(path)!r} was trained with preset {stored.name!r}, not {preset.name!r}"
            raise ValueError(msg)
        preset = stored
        state = read_state_dict(_paths(path)[0])
    else:
        preset = POPP2024 if preset is None else preset
        state = read_published_state_dict(path)
    model = build_model(preset)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        msg = f"checkpoints.py: {str(path)!r} does not fit preset {preset.name!r}: {err}"
        raise ValueError(msg) from err
    return model.eval(), preset
