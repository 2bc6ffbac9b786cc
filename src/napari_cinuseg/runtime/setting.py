"""A setting a user may change, declared once on the dataclass field that holds it.

The training settings (``training.settings.TrainSettings``) and each method's hyper-parameters
(``methods``) declare their fields with :func:`setting`: a default, what it means, and its range or
choices. The command line makes its options from these declarations, the panel its fields, and
:func:`check` refuses a value outside them; no list of names is kept anywhere else. Loaded without
PyTorch, so that ``cinuseg --help`` stays quick.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

#: where a setting is offered: as a command-line option, and as a field of the panel's
#: "Advanced" group (every declared setting is checked wherever it comes from)
CLI, PANEL = "cli", "panel"


class Setting(NamedTuple):
    """What a field's declaration says (:func:`setting`)."""

    name: str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    multiple: int | None = None  # the value must be a multiple of it
    offered: tuple[str, ...] = (CLI, PANEL)

    @property
    def label(self) -> str:
        """A short label: the symbol the help starts with, up to its first comma (τ, α_o,
        σ (painted), …), else the name in words."""
        head = self.help.split(",")[0]
        return head if len(head) <= 3 or not head[0].isascii() else self.name.replace("_", " ")

    def check(self, value: Any) -> None:
        """Refuse ``value`` where the declaration does not allow it (None is allowed where the
        default is None: the setting is unset)."""
        if value is None and self.default is None:
            return
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(
                    f"{self.name} must be one of {', '.join(map(str, self.choices))} ({self.help}), got {value!r}"
                )
            return
        if isinstance(self.default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{self.name} is true or false ({self.help}), got {value!r}")
            return
        if self.low is None and self.high is None and self.multiple is None:
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
            raise ValueError(f"{self.name} is a number ({self.help}), got {value!r}")
        low = -math.inf if self.low is None else self.low
        high = math.inf if self.high is None else self.high
        if not low <= value <= high:
            where = f"at least {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
            raise ValueError(f"{self.name} must be {where} ({self.help}), got {value}")
        if self.multiple and value % self.multiple:
            raise ValueError(f"{self.name} must be a multiple of {self.multiple} ({self.help}), got {value}")


def setting(
    default: Any,
    help: str,
    low: float | None = None,
    high: float | None = None,
    choices: tuple | None = None,
    *,
    multiple: int | None = None,
    offered: tuple[str, ...] = (CLI, PANEL),
) -> Any:
    """A dataclass field that a user may change: its default, what it means (starting with its
    symbol where it has one, e.g. "τ, eq. 1: …"), its range (``low``, ``high``, ``multiple``) or
    ``choices``, and where it is ``offered`` (:data:`CLI`, :data:`PANEL`; () = checked only)."""
    meta = {"setting": dict(help=help, low=low, high=high, choices=choices, multiple=multiple, offered=offered)}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def declared(obj_or_class) -> dict[str, Setting]:
    """The declared settings of a dataclass (an instance or the class), by field name."""
    if not dataclasses.is_dataclass(obj_or_class):
        return {}
    found = {}
    for f in dataclasses.fields(obj_or_class):
        if "setting" in f.metadata:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            found[f.name] = Setting(f.name, default, **f.metadata["setting"])
    return found


def offered(obj_or_class, where: str) -> dict[str, Setting]:
    """The declared settings offered ``where`` (:data:`CLI` or :data:`PANEL`)."""
    return {k: s for k, s in declared(obj_or_class).items() if where in s.offered}


def check(obj) -> None:
    """Check every declared setting of a dataclass instance against its declaration."""
    for name, spec in declared(obj).items():
        spec.check(getattr(obj, name))


def values(obj) -> dict[str, Any]:
    """The values of a dataclass instance's declared settings, for a record."""
    return {k: getattr(obj, k) for k in declared(obj)}
