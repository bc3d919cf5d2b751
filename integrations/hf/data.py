"""Prompts from datasets and files; chat prompts rendered with the policy's chat template.

A prompt is either a string or a conversation: a list of ``{"role", "content"}`` messages,
TRL's conversational format. Conversations go through the policy tokenizer's chat template
with the generation prompt added (``add_generation_prompt=True``), so the policy answers as
the assistant; strings are used as they are.

Sources (:func:`load_prompt_dataset`): a list of prompts, a ``datasets.Dataset``, a
``DatasetDict`` and a split, a local file (``.txt`` one prompt per line, ``.jsonl``/``.json``,
``.parquet``, ``.csv``), a folder written by ``Dataset.save_to_disk`` or holding data files,
or a dataset name passed to ``datasets.load_dataset`` (which needs the network unless the
dataset is in the local cache).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

__all__ = [
    "DEFAULT_PROMPT_COLUMNS",
    "Conversation",
    "Prompt",
    "is_conversation",
    "load_prompt_dataset",
    "render_prompt",
    "render_prompts",
    "sample_prompts",
    "validate_prompt",
    "with_response",
]

Conversation = list[dict[str, str]]
Prompt = Union[str, Conversation]  # noqa: UP007 - a runtime alias on Python 3.10

DEFAULT_PROMPT_COLUMNS = ("prompt", "messages", "conversations", "question", "text")
"""Columns tried in order when no ``column`` is given."""

_FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def is_conversation(prompt: Any) -> bool:
    """True for a list of messages (a conversation), False for a string."""
    return isinstance(prompt, (list, tuple))


def validate_prompt(prompt: Any, where: str = "prompt") -> Prompt:
    """A checked copy of one prompt; the error names ``where`` and the bad message.

    A trailing assistant message is dropped: in conversational datasets it is the reference
    answer, and the policy writes its own.
    """
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"{where} is an empty string")
        return prompt
    if not is_conversation(prompt):
        raise TypeError(
            f"{where} must be a string or a list of {{'role', 'content'}} messages, "
            f"got {type(prompt).__name__}"
        )
    messages: Conversation = []
    for k, message in enumerate(prompt):
        if not isinstance(message, Mapping):
            raise TypeError(f"{where}: message {k} is a {type(message).__name__}, not a dict")
        for key in ("role", "content"):
            if key not in message:
                raise ValueError(f"{where}: message {k} has no {key!r} (keys: {sorted(message)})")
            if not isinstance(message[key], str):
                raise TypeError(
                    f"{where}: message {k} {key!r} must be a string, "
                    f"got {type(message[key]).__name__}"
                )
        messages.append({"role": message["role"], "content": message["content"]})
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages:
        raise ValueError(f"{where} has no message before the assistant's answer")
    return messages


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """The text the policy sees: the string itself, or the conversation through the chat
    template with the generation prompt (the assistant header) added."""
    if isinstance(prompt, str):
        return prompt
    if getattr(tokenizer, "chat_template", None) is None:
        name = getattr(tokenizer, "name_or_path", None)
        which = f" ({name})" if name else ""
        raise ValueError(
            f"the prompts are conversations but the policy tokenizer{which} has no chat "
            "template; set tokenizer.chat_template (a Jinja string), pass a tokenizer that has "
            "one, or give string prompts"
        )
    return tokenizer.apply_chat_template(list(prompt), tokenize=False, add_generation_prompt=True)


def render_prompts(tokenizer: Any, prompts: Sequence[Prompt]) -> list[str]:
    return [render_prompt(tokenizer, p) for p in prompts]


def with_response(prompt: Prompt, response: str) -> Prompt:
    """The whole exchange: the conversation plus the assistant's response (strings joined)."""
    if isinstance(prompt, str):
        return prompt + response
    return [*prompt, {"role": "assistant", "content": response}]


def _pick_column(columns: Sequence[str], column: str | None, source: str) -> str:
    if column is not None:
        if column not in columns:
            raise ValueError(f"{source} has no column {column!r}; its columns: {list(columns)}")
        return column
    for name in DEFAULT_PROMPT_COLUMNS:
        if name in columns:
            return name
    raise ValueError(
        f"{source} has none of the columns {list(DEFAULT_PROMPT_COLUMNS)}; "
        f"name the prompt column (its columns: {list(columns)})"
    )


def _from_dataset(dataset: Any, split: str | None, column: str | None, source: str) -> list[Any]:
    from datasets import DatasetDict, IterableDataset, IterableDatasetDict

    if isinstance(dataset, (DatasetDict, IterableDatasetDict)):
        splits = list(dataset.keys())
        if split is None:
            if len(splits) != 1 and "train" not in splits:
                raise ValueError(f"{source} has splits {splits}; choose one with split=")
            split = "train" if "train" in splits else splits[0]
        if split not in splits:
            raise ValueError(f"{source} has no split {split!r}; its splits: {splits}")
        dataset, source = dataset[split], f"{source} split {split!r}"
    if isinstance(dataset, IterableDataset):
        raise ValueError(f"{source} is streamed; load it without streaming=True")
    name = _pick_column(list(dataset.column_names), column, source)
    return list(dataset[name])


def _from_path(path: Path, split: str | None, column: str | None) -> list[Any]:
    from datasets import load_dataset, load_from_disk

    source = str(path)
    if path.is_dir():
        saved = (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()
        data = load_from_disk(str(path)) if saved else load_dataset(str(path))
        return _from_dataset(data, split, column, source)
    suffix = path.suffix.lower()
    if suffix == ".txt":
        if column is not None:
            raise ValueError(f"{source} is a text file (one prompt per line): it has no columns")
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if suffix not in _FILE_BUILDERS:
        raise ValueError(
            f"{source}: unknown prompt file type {suffix!r}; use .txt, .jsonl, .json, "
            ".parquet or .csv"
        )
    data = load_dataset(_FILE_BUILDERS[suffix], data_files=str(path), split="train")
    return _from_dataset(data, None, column, source)


def load_prompt_dataset(
    source: Any,
    *,
    split: str | None = None,
    column: str | None = None,
    limit: int | None = None,
) -> list[Prompt]:
    """Prompts (strings or conversations) from ``source``, checked one by one.

    Args:
        source: a sequence of prompts; a ``datasets.Dataset`` or ``DatasetDict``; a local
            file or folder; or a dataset name for ``datasets.load_dataset``.
        split: the split of a ``DatasetDict`` or named dataset (default ``"train"``).
        column: the prompt column (default: the first of :data:`DEFAULT_PROMPT_COLUMNS`).
        limit: keep the first ``limit`` prompts.

    Raises ``ValueError`` naming the source and the row of a bad prompt, the missing column
    (with the columns there are) or the missing split; ``FileNotFoundError`` for a path that
    looks local but does not exist.
    """
    label = "prompts"
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        label = str(source)
        if path.exists():
            rows = _from_path(path, split, column)
        elif isinstance(source, Path) or str(source).startswith((".", "/", "~")):
            raise FileNotFoundError(f"prompt source {source} does not exist")
        else:
            from datasets import load_dataset

            try:
                data = load_dataset(str(source), split=split or "train")
            except Exception as exc:  # the hub's own message follows
                raise ValueError(
                    f"could not load the dataset {source!r} (not a local path; a dataset name "
                    f"needs the network or the local cache): {exc}"
                ) from exc
            rows = _from_dataset(data, None, column, label)
    elif _is_hf_dataset(source):
        label = "the dataset"
        rows = _from_dataset(source, split, column, label)
    elif isinstance(source, Sequence):
        if split is not None or column is not None:
            raise ValueError("split and column apply to datasets, not to a list of prompts")
        rows = list(source)
    else:
        raise TypeError(
            "prompts must be a list, a datasets.Dataset/DatasetDict, a file or a dataset name, "
            f"got {type(source).__name__}"
        )
    if limit is not None:
        rows = rows[:limit]
    prompts = [validate_prompt(p, f"{label} row {i}") for i, p in enumerate(rows)]
    if not prompts:
        raise ValueError(f"no prompts in {label}")
    kinds = {is_conversation(p) for p in prompts}
    if len(kinds) > 1:
        first_chat = next(i for i, p in enumerate(prompts) if is_conversation(p))
        raise ValueError(
            f"{label} mixes strings and conversations (row {first_chat} is a conversation, "
            "others are strings); use one kind, so that every prompt is tokenized alike"
        )
    return prompts


def _is_hf_dataset(obj: Any) -> bool:
    try:
        from datasets import Dataset, DatasetDict, IterableDataset, IterableDatasetDict
    except ImportError:  # pragma: no cover - datasets comes with the hf extra
        return False
    return isinstance(obj, (Dataset, DatasetDict, IterableDataset, IterableDatasetDict))


def sample_prompts(
    pool: Sequence[Prompt],
    seed: int,
    step: int,
    batch_size: int,
    process_index: int = 0,
    num_processes: int = 1,
) -> list[Prompt]:
    """Process ``process_index``'s ``batch_size`` prompts for ``step`` (1-based).

    A function of (seed, step) only, so a resumed run draws what an uninterrupted one would:
    the pool is visited in a fresh random order each pass, and each process takes its own
    slice of the global batch.
    """
    import torch

    start = (step - 1) * batch_size * num_processes + process_index * batch_size
    out: list[Prompt] = []
    perm_epoch, perm = -1, None
    for k in range(start, start + batch_size):
        epoch = k // len(pool)
        if epoch != perm_epoch:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm, perm_epoch = torch.randperm(len(pool), generator=gen).tolist(), epoch
        out.append(pool[perm[k % len(pool)]])  # type: ignore[index]
    return out
