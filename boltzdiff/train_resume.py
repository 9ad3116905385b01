"""Resume and interrupt for the training loop (:func:`boltzdiff.train.train`): which settings may change when a
run is resumed, cutting ``metrics.jsonl`` back to the checkpoint's step, and Ctrl-C that stops after the current
step (the loop then writes a checkpoint and raises :class:`TrainingInterrupted`)."""

from __future__ import annotations

import json
from pathlib import Path

from boltzdiff.config import TrainConfig
from boltzdiff.errors import ConfigError
from boltzdiff.io import atomic_write_text

#: TrainConfig fields that may differ when a run is resumed; any other change is refused
RESUME_MAY_CHANGE = frozenset({"steps", "checkpoint_every", "num_threads", "device"})


def resume_changes(out: Path, cfg: TrainConfig) -> dict[str, tuple]:
    """``{field: (saved, now)}`` for the fields of ``out/config.yaml`` that ``cfg`` changes; a change outside
    :data:`RESUME_MAY_CHANGE` (the recipe, the data, the model) is a one-line error: the checkpoint was made
    with the saved settings, so continuing it with others would mix two runs under one name."""
    from boltzdiff.io import load_yaml_mapping

    saved = load_yaml_mapping(out / "config.yaml", "the config.yaml that `boltzdiff train` wrote")
    now = cfg.to_dict()
    diff = {k: (saved[k], now[k]) for k in now if k in saved and saved[k] != now[k]}
    refused = {k: v for k, v in diff.items() if k not in RESUME_MAY_CHANGE}
    if refused:
        shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(refused.items())[:3])
        raise ConfigError(
            f"--resume: {out} was started with other settings ({shown}); resume with the settings in "
            f"{out / 'config.yaml'} (only {', '.join(sorted(RESUME_MAY_CHANGE))} may change) or train into a new --out"
        )
    return diff


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the checkpoint at ``step`` was written to ``ckpt``."""

    def __init__(self, step: int, ckpt: Path):
        super().__init__(f"interrupted at step {step}; checkpoint written to {ckpt}")
        self.step, self.ckpt = step, ckpt


class StopOnInterrupt:
    """The first SIGINT only asks the training loop to stop after its current step (which then writes a
    checkpoint); a second one interrupts at once. Only in the main thread, where signal handlers can be set."""

    def __init__(self):
        import signal
        import threading

        self.requested = False
        self._old = None
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        import signal

        if self.requested:
            signal.signal(signal.SIGINT, self._old or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True

    def restore(self) -> None:
        import signal

        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None


def truncate_metrics(path: Path, step: int) -> None:
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    atomic_write_text(path, "".join(ln + "\n" for ln in keep))
