"""Keys that a pydantic schema would silently ignore: typos in Ray's sections of a config.

Ray Serve's config models ignore keys they do not know, so ``target_ongoing_requestz: 4``
in an ``autoscaling_config`` passes validation and leaves Ray's default in force. This
walks a parsed document alongside a pydantic model and names every key that no field
(or alias) of the model at that place accepts, with the closest known key.
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel


@dataclass(frozen=True)
class UnknownKey:
    """A key at ``path`` that the model there does not have."""

    path: str
    key: str
    known: tuple[str, ...]

    @property
    def reason(self) -> str:
        """``unknown key 'x' (did you mean 'y'?)`` — or the known keys when none is close."""
        close = difflib.get_close_matches(self.key, self.known, n=1, cutoff=0.6)
        if close:
            return f"unknown key {self.key!r} (did you mean {close[0]!r}?)"
        return f"unknown key {self.key!r}; known keys: {', '.join(sorted(self.known))}"


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models an annotation can hold directly (through Optional/Union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType or origin is typing.Annotated:
        for arg in typing.get_args(annotation):
            yield from _models_in(arg)


def _item_models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    """The pydantic models the items of a list-typed annotation can be."""
    origin = typing.get_origin(annotation)
    if origin in (list, tuple, typing.Union, types.UnionType, typing.Annotated):
        for arg in typing.get_args(annotation):
            if typing.get_origin(arg) in (list, tuple):
                for item in typing.get_args(arg):
                    yield from _models_in(item)
            elif origin in (list, tuple):
                yield from _models_in(arg)
            else:
                yield from _item_models_in(arg)


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def unknown_keys(
    model: type[BaseModel], value: Any, path: str = "", skip: frozenset[str] = frozenset()
) -> list[UnknownKey]:
    """Every key of ``value`` (and of its nested sections) that ``model`` would ignore.

    Free-form fields (``dict``-typed, such as ``args``, ``user_config`` or
    ``runtime_env``) are not entered; ``skip`` names fields not to enter either
    because something else validates them.
    """
    if not isinstance(value, Mapping):
        return []
    fields = model.model_fields
    names: dict[str, str] = {}
    for name, field in fields.items():
        names[name] = name
        if field.alias:
            names[field.alias] = name
    found: list[UnknownKey] = []
    for key, item in value.items():
        if key not in names:
            found.append(UnknownKey(path, str(key), tuple(fields)))
            continue
        name = names[key]
        if name in skip:
            continue
        annotation = fields[name].annotation
        where = _join(path, str(key))
        if isinstance(item, Mapping):
            for nested in _models_in(annotation):
                found.extend(unknown_keys(nested, item, where))
                break
        elif isinstance(item, list):
            for nested in _item_models_in(annotation):
                for index, element in enumerate(item):
                    found.extend(unknown_keys(nested, element, _join(where, index)))
                break
    return found
