"""The dict round trip every configuration object shares, and shared names."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Self

from napari_unet_tuner.errors import ConfigError

OutputKind = Literal["boundary3", "boundary3_distance", "foreground"]


class DictMixin:
    """``to_dict``/``from_dict`` for flat dataclasses of JSON values."""

    def to_dict(self) -> dict[str, Any]:
        """Return the fields as a JSON-compatible dict."""
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        """Build from a dict as written by `to_dict`.

        Raises
        ------
        ConfigError
            If ``data`` has keys the class does not know or values of a wrong type.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__} must be a mapping, got {type(data).__name__}")
        names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {unknown}; known: {sorted(names)}")
        kwargs = {}
        for key, value in data.items():
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"invalid {cls.__name__}: {exc}") from exc
