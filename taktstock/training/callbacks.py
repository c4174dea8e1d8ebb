"""The callback protocol: plain objects with any of these hooks (all optional), called by the trainer.

    on_train_start(trainer)    on_step_end(trainer)    on_validation_end(trainer, metrics)
    on_epoch_end(trainer)      on_train_end(trainer)

A callback with `state_dict()`/`load_state_dict(state)` is checkpointed with the run.
"""

from __future__ import annotations

from typing import Any, Literal, Protocol

Hook = Literal["on_train_start", "on_step_end", "on_validation_end", "on_epoch_end", "on_train_end"]
HOOKS: tuple[Hook, ...] = ("on_train_start", "on_step_end", "on_validation_end", "on_epoch_end", "on_train_end")


class Callback(Protocol):
    """Documentation of the hooks; callbacks need not inherit from it and may define any subset."""

    def on_train_start(self, trainer: Any) -> None: ...
    def on_step_end(self, trainer: Any) -> None: ...
    def on_validation_end(self, trainer: Any, metrics: dict[str, float]) -> None: ...
    def on_epoch_end(self, trainer: Any) -> None: ...
    def on_train_end(self, trainer: Any) -> None: ...


class Callbacks:
    """The run's callbacks with each hook's methods looked up once (the loop calls on_step_end every step)."""

    def __init__(self, callbacks: list[Any]) -> None:
        self.items = list(callbacks)
        self.hooks = {hook: [getattr(cb, hook) for cb in self.items if callable(getattr(cb, hook, None))] for hook in HOOKS}

    def call(self, hook: Hook, trainer: Any, **kwargs: Any) -> None:
        for fn in self.hooks[hook]:
            fn(trainer, **kwargs)

    # Checkpointed as one part: one entry per callback, None for callbacks without state.
    def state_dict(self) -> list[Any]:
        return [cb.state_dict() if hasattr(cb, "state_dict") else None for cb in self.items]

    def load_state_dict(self, states: list[Any]) -> None:
        for cb, state in zip(self.items, states or [], strict=False):
            if state is not None and hasattr(cb, "load_state_dict"):
                cb.load_state_dict(state)
