"""Named presets shipped as data files: models (``models/*.json``) and systems (``hardware/*.json``).

A model may also be given as a path to a HuggingFace ``config.json`` (or its directory).
"""

from __future__ import annotations

import difflib
import json
from importlib import resources
from pathlib import Path

from ..architectures import Architecture, architecture_from_dict
from ..efficiency import Efficiency, ideal
from ..area import Die
from ..hardware import Chip, Interconnect, MemorySystem, SystolicChip, System
from ..hf_config import load_hf_config


def _folder(kind: str):
    return resources.files(__package__) / kind


def _names(kind: str) -> list[str]:
    return sorted(p.name[:-5] for p in _folder(kind).iterdir() if p.name.endswith(".json"))


def list_models() -> list[str]:
    return _names("models")


def list_hardware() -> list[str]:
    return _names("hardware")


def list_calibrations() -> list[str]:
    return ["ideal"]


def _read(kind: str, name: str, what: str) -> dict:
    names = _names(kind)
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown {what} {name!r}; available: {', '.join(names)}{hint}")
    return json.loads((_folder(kind) / f"{name}.json").read_text())


def model_spec(name: str) -> dict:
    """The raw preset dictionary of a model (with its ``source``)."""
    return _read("models", name, "model")


def load_model(name_or_path: str) -> Architecture:
    """A preset name (e.g. ``"llama-3-70b"``) or a path to a HuggingFace config.json."""
    path = Path(name_or_path)
    if path.suffix == ".json" or path.is_dir() or path.exists():
        return load_hf_config(path)
    return architecture_from_dict(model_spec(name_or_path))


def hardware_spec(name: str) -> dict:
    return _read("hardware", name, "hardware")


def chip_from_dict(spec: dict) -> Chip | SystolicChip:
    """A datasheet-level :class:`Chip`, or a :class:`SystolicChip` when ``spec`` describes cores."""
    if "cores" not in spec:
        return Chip(**spec)
    fields = dict(spec)
    memory = fields.pop("memory", None)
    die = fields.pop("die", {})
    if not isinstance(memory, dict):
        raise ValueError("a microarchitecture chip spec needs a 'memory' object (technology, bus_width_bits, "
                         "pin_rate_bps, packages, capacity_per_package_bytes)")
    try:
        return SystolicChip(memory=MemorySystem(**memory), die=Die(**die), **fields)
    except TypeError as exc:
        raise ValueError(f"bad microarchitecture chip spec: {exc}") from exc


def system_from_dict(spec: dict) -> System:
    chip = chip_from_dict(spec["chip"])
    return System(
        chip=chip,
        devices_per_node=spec["devices_per_node"],
        scale_up=Interconnect(**spec["scale_up"]),
        scale_out=Interconnect(**spec["scale_out"]),
    )


def load_hardware(name: str) -> System:
    """A system preset, e.g. ``"h100-sxm"``."""
    return system_from_dict(hardware_spec(name))


def load_calibration(name: str) -> Efficiency:
    """Efficiency factors by name. ``"ideal"``: every factor 1, a pure roofline."""
    if name == "ideal":
        return ideal()
    raise ValueError(f"unknown calibration {name!r}; available: {', '.join(list_calibrations())}")
