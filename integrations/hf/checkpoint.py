"""Atomic checkpoints: write everything into a temporary folder, then rename.

Layout of a checkpoint folder::

    policy/                   save_pretrained(): model or LoRA adapter (safetensors), tokenizer
    value_heads.safetensors   the n value heads
    optimizer.pt              optimizer state (torch.save; loaded with weights_only=True)
    rng_state.pt              torch / CUDA / Python / NumPy generator states
    trainer_state.json        step, KL coefficient, reward names, config, metric history

``trainer_state.json`` is written last; a folder without it is not a checkpoint. The
folder is built as a hidden sibling ``.checkpoint-STEP.tmp-TAG`` and renamed into place,
so a process killed while writing leaves no ``checkpoint-STEP`` that :func:`find_latest_checkpoint`
could choose; :func:`clean_interrupted_writes` tidies what such a process left behind.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "STATE_FILE",
    "atomic_write_dir",
    "capture_rng_state",
    "clean_interrupted_writes",
    "find_latest_checkpoint",
    "is_checkpoint",
    "resolve_resume",
    "restore_rng_state",
    "resume_advice",
]

STATE_FILE = "trainer_state.json"
RESUME_MODES = ("latest", "auto")
"""``resume_from`` values that name no folder: the newest checkpoint in ``output_dir``
(``"latest"``: one must exist; ``"auto"``: start fresh when there is none)."""
_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<tag>[0-9a-f]{8})")


def atomic_write_dir(target: str | Path, write: Callable[[Path], None]) -> Path:
    """Build ``target`` with ``write(tmp)`` in a sibling temporary folder, then rename.

    A crash while writing leaves at most a hidden ``.NAME.tmp-*`` folder; an
    existing ``target`` is replaced only once the new one is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = target.parent / f".{target.name}.tmp-{tag}"
    try:
        tmp.mkdir()
        write(tmp)
        _fsync_tree(tmp)
        if target.exists():
            old = target.parent / f".{target.name}.old-{tag}"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _fsync_dir(folder: Path) -> None:
    # The rename itself on disk (POSIX); a no-op where folders cannot be opened.
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def clean_interrupted_writes(folder: str | Path) -> list[str]:
    """Finish or remove what :func:`atomic_write_dir` calls killed mid-way left in ``folder``.

    - ``.NAME.tmp-TAG`` alone: a write that never completed; removed.
    - ``.NAME.old-TAG`` with ``NAME`` missing: the process died between the two renames
      that replace an existing ``NAME``; the new version ``.NAME.tmp-TAG`` was complete
      (it is renamed only after it is written and synced), so the replacement is finished;
      without it the old version is put back.
    - ``.NAME.old-TAG`` with ``NAME`` present: the replaced version; removed.

    Returns the names acted on. Only for a folder no other process is writing into.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    done: list[str] = []
    entries = sorted(root.iterdir(), key=lambda p: p.name)
    for path in entries:
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or match["kind"] != "old" or not path.exists():
            continue
        target = root / match["name"]
        if not target.exists():
            newer = root / f".{match['name']}.tmp-{match['tag']}"
            os.replace(newer if newer.is_dir() else path, target)
            done.append(target.name)
    for path in entries:
        match = _TEMPORARY.fullmatch(path.name)
        if match is not None and path.exists():
            shutil.rmtree(path, ignore_errors=True)
            done.append(path.name)
    return done


def _fsync_tree(folder: Path) -> None:
    # Data on disk before the rename makes it visible (rename is atomic, writes are not).
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def is_checkpoint(folder: str | Path) -> bool:
    return (Path(folder) / STATE_FILE).is_file()


def find_latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete ``checkpoint-<step>`` folder with the highest step, if any."""
    best: tuple[int, Path] | None = None
    root = Path(output_dir)
    if not root.is_dir():
        return None
    for child in root.iterdir():
        match = re.fullmatch(r"checkpoint-(\d+)", child.name)
        if match and is_checkpoint(child):
            step = int(match.group(1))
            if best is None or step > best[0]:
                best = (step, child)
    return None if best is None else best[1]


def resolve_resume(resume_from: str | None, output_dir: str | Path) -> Path | None:
    """The checkpoint folder ``resume_from`` names: a path, ``"latest"`` (the newest complete
    ``checkpoint-*`` in ``output_dir``; an error when there is none) or ``"auto"`` (the same,
    or None, a fresh start, when there is none)."""
    if resume_from is None:
        return None
    if resume_from in RESUME_MODES:
        found = find_latest_checkpoint(output_dir)
        if found is None and resume_from == "latest":
            raise FileNotFoundError(
                f"resume_from='latest' but no complete checkpoint-* in {output_dir}"
            )
        return found
    path = Path(resume_from)
    if not is_checkpoint(path):
        raise FileNotFoundError(f"{path} is not a checkpoint (no {STATE_FILE})")
    return path


def resume_advice(output_dir: str | Path) -> str:
    """What a stopped run's error tells the user: the checkpoint a restart resumes from."""
    latest = find_latest_checkpoint(output_dir)
    if latest is None:
        return (
            f"No checkpoint was written in {output_dir} yet: a restart begins at step 1 "
            "(save_every sets how often one is written)."
        )
    return (
        f"The last complete checkpoint is {latest}: once the cause is fixed, restart every "
        "process with resume_from='auto' (paretoopt train --resume auto) to continue from it."
    )


def capture_rng_state() -> dict[str, Any]:
    """Every generator a training step draws from, in weights_only-loadable types."""
    # The legacy global generator is the state user reward code may draw from.
    np_state = np.random.get_state()  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": json.dumps(random.getstate()),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    py = json.loads(state["python"])
    random.setstate((py[0], tuple(py[1]), py[2]))
    nps = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            nps["name"],
            nps["keys"].numpy().astype(np.uint32),
            nps["pos"],
            nps["has_gauss"],
            nps["cached_gaussian"],
        )
    )
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
