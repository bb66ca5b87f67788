"""One way to build a network: `create_model(name, **kwargs)`.

Training, export and serving all build networks through this registry, so a checkpoint
only needs to record the registered name and its keyword arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# What each registered network is: a classifier (returns `ModelOutput`) or a segmenter
# (returns per-voxel logits); registry-wide checks and benchmarks pick by kind.
Kind = Literal["classifier", "segmenter"]
_KINDS: dict[str, Kind] = {}


class ModelOutput(NamedTuple):
    """What every registered network returns (the ONNX contract of DESIGN.md).

    logits: (N, C); attention: (N, 1, d, h, w) spatial attention of the last stage, in
    [0, 1]; features: (N, F, d, h, w) last-stage features for region graphs and CAMs.
    """

    logits: torch.Tensor
    attention: torch.Tensor
    features: torch.Tensor


def register_model(factory: Callable[..., nn.Module], kind: Kind = "classifier") -> Callable[..., nn.Module]:
    """Register `factory` under its function name."""
    name = factory.__name__
    if name in _REGISTRY:
        raise ValueError(f"a model named {name!r} is already registered")
    _REGISTRY[name] = factory
    _KINDS[name] = kind
    return factory


def register_segmenter(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register a segmentation network (logits (N, labels, D, H, W), no `ModelOutput`)."""
    return register_model(factory, kind="segmenter")


def list_models(kind: Kind = "classifier") -> list[str]:
    """Registered names of one kind (classifiers by default: what trainers and the
    classification benchmarks build)."""
    return sorted(name for name, k in _KINDS.items() if k == kind)


def _factory(name: str) -> Callable[..., nn.Module]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; registered: {list_models()}") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered network `name` with `kwargs`."""
    return _factory(name)(**kwargs)


def _defaults(function: Callable[..., Any]) -> dict[str, Any]:
    return {
        p.name: p.default
        for p in inspect.signature(function).parameters.values()
        if p.default is not inspect.Parameter.empty
    }


def resolved_kwargs(name: str, **kwargs: Any) -> dict[str, Any]:
    """`kwargs` with every default of network `name` filled in: what a checkpoint records, so
    it rebuilds the same network after a default changes (a checkpoint of group-norm layers
    would otherwise load silently into instance-norm layers of the same parameter names).

    Defaults come from the network class (what a factory's ``**kwargs`` reach), overridden
    by the factory's own (a factory may choose a narrower `width`), overridden by `kwargs`.
    """
    factory = _factory(name)
    # The class comes from the factory's return annotation: no network is built for this.
    signature = inspect.signature(factory, eval_str=True)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    network = signature.return_annotation
    resolved = {**(_defaults(network.__init__) if takes_any else {}), **_defaults(factory), **kwargs}
    return {key: list(v) if isinstance(v, tuple) else v for key, v in resolved.items()}


def model_from_checkpoint(checkpoint: Mapping[str, Any]) -> nn.Module:
    """Rebuild a network from a loaded checkpoint dict and put it in eval mode.

    A checkpoint holds at least ``{"model": name, "model_kwargs": {...}, "state_dict": ...}``;
    training writes more (config, metrics), which is ignored here.
    """
    for key in ("model", "model_kwargs", "state_dict"):
        if key not in checkpoint:
            raise ValueError(f"checkpoint lacks {key!r}; keys: {sorted(checkpoint)}")
    model = create_model(checkpoint["model"], **checkpoint["model_kwargs"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()
