"""Named presets shipped as data files: models (``models/*.json``), systems
(``hardware/*.json``), offload memory tiers (``offload/*.json``) and fitted efficiency sets
(``calibrations/*.json``).

A model may also be given as a path to a HuggingFace ``config.json`` (or its directory), and
a calibration as a path to a set written by ``jaxmodel calibrate``.
"""

from __future__ import annotations

import difflib
import importlib
import json
from importlib import resources
from pathlib import Path

from ..architectures import Architecture, architecture_from_dict
from ..efficiency import Efficiency, ideal
from ..area import Die
from ..hardware import Chip, Interconnect, MemorySystem, NetworkLevel, OffloadMemory, SystolicChip, System
from ..hf_config import load_hf_config


def _folder(kind: str):
    return resources.files(__package__) / kind


def _names(kind: str) -> list[str]:
    return sorted(p.name[:-5] for p in _folder(kind).iterdir() if p.name.endswith(".json"))


def list_models() -> list[str]:
    return _names("models")


def list_hardware() -> list[str]:
    return _names("hardware")


def list_offload() -> list[str]:
    return _names("offload")


def list_calibrations() -> list[str]:
    return ["ideal", *_names("calibrations")]


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


_OFFLOAD_FIELDS = ("bandwidth_Bps", "capacity_bytes", "efficiency")


def offload_spec(name: str) -> dict:
    """The raw preset dictionary of an offload tier (with its ``sources``)."""
    return _read("offload", name, "offload tier")


def offload_from_dict(spec: dict | str) -> OffloadMemory:
    """An :class:`OffloadMemory` from a tier name (e.g. ``"pcie5-host"``) or a dict holding
    ``bandwidth_Bps``, ``capacity_bytes`` and optionally ``efficiency``, or ``"tier"``: a
    tier name whose fields the other keys override."""
    if isinstance(spec, str):
        spec = {"tier": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"'offload' must be a tier name or an object (got {spec!r})")
    fields = dict(offload_spec(spec["tier"])) if "tier" in spec else {}
    fields.update({k: v for k, v in spec.items() if k != "tier"})
    unknown = set(fields) - set(_OFFLOAD_FIELDS) - {"name", "description", "sources"}
    if unknown:
        raise ValueError(f"offload: unknown fields {sorted(unknown)}; expected {list(_OFFLOAD_FIELDS)} or 'tier'")
    missing = [k for k in _OFFLOAD_FIELDS[:2] if k not in fields]
    if missing:
        raise ValueError(f"offload: missing {missing} (or name a tier with 'tier': one of {list_offload()})")
    return OffloadMemory(**{k: fields[k] for k in _OFFLOAD_FIELDS if k in fields})


def load_offload(name: str) -> OffloadMemory:
    """A named offload tier: ``pcie5-host``, ``pcie4-host``, ``nvlink-c2c``, ``cxl2-x16``
    (see ``jaxmodel/presets/offload/*.json`` for figures and sources)."""
    return offload_from_dict(name)


def _interconnect(spec, field: str) -> Interconnect:
    if not isinstance(spec, dict):
        raise ValueError(f"hardware spec: {field} must be an object with bandwidth_Bps, link_latency_s "
                         f"[, collective_latency_s, efficiency] (got {spec!r})")
    try:
        return Interconnect(**spec)
    except TypeError as exc:
        raise ValueError(f"hardware spec: bad {field}: {exc}") from exc
    except ValueError as exc:
        raise ValueError(f"hardware spec: {field}: {exc}") from exc


def _middle_levels(spec) -> tuple[NetworkLevel, ...]:
    """``middle_levels``: a list of ``{"size", "bandwidth_Bps", "link_latency_s"
    [, "collective_latency_s", "efficiency"]}``, innermost first."""
    if spec is None:
        return ()
    if not isinstance(spec, list):
        raise ValueError(f"hardware spec: middle_levels must be a list of levels (got {spec!r})")
    levels = []
    for i, level in enumerate(spec):
        field = f"middle_levels[{i}]"
        if not isinstance(level, dict) or "size" not in level:
            raise ValueError(f"hardware spec: {field} must be an object with a 'size' and its link figures "
                             f"(got {level!r})")
        link = {k: v for k, v in level.items() if k != "size"}
        try:
            levels.append(NetworkLevel(level["size"], _interconnect(link, field)))
        except ValueError as exc:
            message = str(exc)
            raise ValueError(message if field in message else f"hardware spec: {field}: {message}") from exc
    return tuple(levels)


def system_from_dict(spec: dict) -> System:
    """A :class:`System` from a hardware preset dictionary: ``chip``, ``devices_per_node``,
    ``scale_up``, ``scale_out`` and optionally ``middle_levels`` (see :func:`_middle_levels`)
    and ``offload`` (a second memory tier: a tier name or an object, see :func:`offload_from_dict`)."""
    for key in ("chip", "devices_per_node", "scale_up", "scale_out"):
        if key not in spec:
            raise ValueError(f"hardware spec: missing {key!r}")
    chip = chip_from_dict(spec["chip"])
    offload = spec.get("offload")
    return System(
        chip=chip,
        devices_per_node=spec["devices_per_node"],
        scale_up=_interconnect(spec["scale_up"], "scale_up"),
        scale_out=_interconnect(spec["scale_out"], "scale_out"),
        offload=None if offload is None else offload_from_dict(offload),
        middle_levels=_middle_levels(spec.get("middle_levels")),
    )


def load_hardware(name: str) -> System:
    """A system preset, e.g. ``"h100-sxm"``."""
    return system_from_dict(hardware_spec(name))


def calibration_spec(name_or_path: str) -> dict:
    """The raw dictionary of a fitted set: a preset name (e.g. ``"h100-vllm"``) or a JSON path."""
    path = Path(name_or_path)
    if path.suffix == ".json" and path.exists():
        return json.loads(path.read_text())
    return _read("calibrations", name_or_path, "calibration")


#: set key -> class of :mod:`jaxmodel.kernels` (module of the same name).
_KERNEL_MODELS = {"gemm": "GemmModel", "attention": "AttentionModel", "collectives": "CollectiveModel"}


def efficiency_from_dict(spec: dict) -> Efficiency:
    """An :class:`Efficiency` from a set's ``efficiency`` factors and its fitted kernel models
    (``gemm``, ``attention``, ``collectives``: each ``{"params": {...}, ...}``)."""
    fields = dict(spec.get("efficiency", {}))
    for key, class_name in _KERNEL_MODELS.items():
        if spec.get(key) is not None:
            cls = getattr(importlib.import_module(f"jaxmodel.kernels.{key}"), class_name)
            try:
                fields[key] = cls(**spec[key]["params"])
            except TypeError as exc:
                raise ValueError(f"calibration set: bad {key} parameters: {exc}") from exc
    try:
        return Efficiency(cores=spec.get("cores"), **fields)
    except TypeError as exc:
        raise ValueError(f"calibration set: bad efficiency factors: {exc}") from exc


def load_calibration(name_or_path: str) -> Efficiency:
    """Efficiency by name or path. ``"ideal"``: every factor 1, a pure roofline; ``"h100-vllm"``,
    ``"a100-vllm"``: kernel models fitted to vLLM kernels measured on those GPUs."""
    if name_or_path == "ideal":
        return ideal()
    return efficiency_from_dict(calibration_spec(name_or_path))
