"""Prompts from datasets and files, chat templates, and multi-head reward models (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("datasets")

import datasets
from hf_fixtures import (
    CHAT_TEMPLATE,
    CHAT_WORDS,
    CHATS,
    PROMPTS,
    build_tokenizer,
    make_two_head_reward_model,
)
from paretoopt.integrations.hf.data import (
    load_prompt_dataset,
    render_prompt,
    validate_prompt,
    with_response,
)
from paretoopt.integrations.hf.reward_model_specs import parse_reward_model_spec
from paretoopt.integrations.hf.reward_models import (
    RewardModel,
    shared_reward_model,
)

pytestmark = pytest.mark.hf


@pytest.fixture(scope="module")
def chat_tok(tmp_path_factory: pytest.TempPathFactory):
    return build_tokenizer(
        tmp_path_factory.mktemp("chat_tok"), extra_words=CHAT_WORDS, chat_template=CHAT_TEMPLATE
    )


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_two_head_reward_model(tmp_path_factory.mktemp("rm2"))


# ----------------------------------------------------------------- datasets


def test_prompts_from_every_kind_of_source(tmp_path: Path) -> None:
    rows = [{"prompt": p, "id": i} for i, p in enumerate(PROMPTS)]
    ds = datasets.Dataset.from_list(rows)
    assert load_prompt_dataset(ds) == PROMPTS
    dd = datasets.DatasetDict({"train": ds, "test": ds.select(range(2))})
    assert load_prompt_dataset(dd, split="test") == PROMPTS[:2]
    assert load_prompt_dataset(dd) == PROMPTS  # "train" by default
    assert load_prompt_dataset(PROMPTS, limit=3) == PROMPTS[:3]

    (tmp_path / "p.txt").write_text("\n".join(PROMPTS) + "\n\n")
    assert load_prompt_dataset(tmp_path / "p.txt") == PROMPTS
    (tmp_path / "p.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_prompt_dataset(str(tmp_path / "p.jsonl")) == PROMPTS
    ds.to_parquet(str(tmp_path / "p.parquet"))
    assert load_prompt_dataset(tmp_path / "p.parquet", column="prompt") == PROMPTS
    dd.save_to_disk(str(tmp_path / "saved"))
    assert load_prompt_dataset(tmp_path / "saved", split="test") == PROMPTS[:2]
    # A folder of data files goes through datasets.load_dataset, as a hub name would.
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "train.jsonl").write_text((tmp_path / "p.jsonl").read_text())
    assert load_prompt_dataset(str(tmp_path / "folder")) == PROMPTS


def test_conversations_are_checked_and_trailing_answers_dropped(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_list([{"messages": m} for m in CHATS])
    prompts = load_prompt_dataset(ds)
    assert prompts[0] == CHATS[0] and prompts[1] == CHATS[1]
    assert prompts[2] == CHATS[2][:1]  # the reference answer is not part of the prompt
    with pytest.raises(ValueError, match=r"row 1: message 0 has no 'content'"):
        load_prompt_dataset([CHATS[0], [{"role": "user"}]])
    with pytest.raises(TypeError, match="row 0 must be a string or a list"):
        load_prompt_dataset([3])
    with pytest.raises(ValueError, match="mixes strings and conversations"):
        load_prompt_dataset(["hello", CHATS[0]])
    with pytest.raises(ValueError, match="no message before"):
        validate_prompt([{"role": "assistant", "content": "x"}])


def test_source_errors_name_what_is_missing(tmp_path: Path) -> None:
    ds = datasets.Dataset.from_list([{"question": "q", "n": 1}])
    assert load_prompt_dataset(ds) == ["q"]
    with pytest.raises(ValueError, match=r"no column 'prompt'; its columns: \['question', 'n'\]"):
        load_prompt_dataset(ds, column="prompt")
    bare = datasets.Dataset.from_list([{"n": 1}])
    with pytest.raises(ValueError, match="name the prompt column"):
        load_prompt_dataset(bare)
    dd = datasets.DatasetDict({"a": ds, "b": ds})
    with pytest.raises(ValueError, match=r"splits \['a', 'b'\]; choose one"):
        load_prompt_dataset(dd)
    with pytest.raises(ValueError, match="no split 'c'"):
        load_prompt_dataset(dd, split="c")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_prompt_dataset("./no/such/prompts.jsonl")
    (tmp_path / "p.xml").write_text("<p/>")
    with pytest.raises(ValueError, match=r"unknown prompt file type '\.xml'"):
        load_prompt_dataset(tmp_path / "p.xml")


def test_chat_prompts_render_with_the_generation_prompt(chat_tok) -> None:
    text = render_prompt(chat_tok, CHATS[1])
    assert text == "system | a short story | user | this movie is | assistant |"
    assert render_prompt(chat_tok, "plain text") == "plain text"
    ids = chat_tok(text, add_special_tokens=False)["input_ids"]
    assert chat_tok.unk_token_id not in ids  # every word of the template is known
    plain = build_tokenizer(Path(chat_tok.name_or_path).parent / "plain")
    with pytest.raises(ValueError, match="no chat template"):
        render_prompt(plain, CHATS[0])


# ------------------------------------------------------------ reward models


def _direct_logits(path: Path, texts: list[str], add_special: bool = True) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    with torch.no_grad():
        return torch.cat(
            [model(**tok([t], add_special_tokens=add_special, return_tensors="pt")).logits
             for t in texts]
        )  # fmt: skip


def test_one_model_two_objectives_loaded_once_scored_once(rm_path: Path, monkeypatch) -> None:
    from transformers import AutoModelForSequenceClassification

    prompts, responses = PROMPTS[:3], [" good", " very dull and long", " fun"]
    want = _direct_logits(rm_path, [p + r for p, r in zip(prompts, responses, strict=True)])
    loads = []
    original = AutoModelForSequenceClassification.from_pretrained

    def counting(*args, **kwargs):
        loads.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", counting)
    helpful, verbose = parse_reward_model_spec(f"helpful,verbose={rm_path}:1,0")
    # The same model declared again as a separate objective shares the loaded weights.
    (again,) = parse_reward_model_spec(f"again={rm_path}:1")
    assert (helpful.name, verbose.name, again.name) == ("helpful", "verbose", "again")
    assert helpful.reward_model is verbose.reward_model is again.reward_model

    h, v, a = (f(prompts, responses) for f in (helpful, verbose, again))
    assert len(loads) == 1 and helpful.reward_model.forward_batches == 1
    assert h == pytest.approx(want[:, 1].tolist(), abs=1e-5)
    assert v == pytest.approx(want[:, 0].tolist(), abs=1e-5)
    assert a == h and h != v
    helpful(prompts[:2], responses[:2])  # a new batch: one more forward pass
    assert helpful.reward_model.forward_batches == 2 and len(loads) == 1

    # Separately constructed RewardModel objects still share the weights.
    other = RewardModel(rm_path, separator=" ")
    assert other.model is helpful.reward_model.model and len(loads) == 1


def test_reward_model_reads_conversations_with_its_own_template(rm_path: Path, chat_tok) -> None:
    rm = shared_reward_model(rm_path)
    head = rm.head(1)
    prompts, responses = [CHATS[0], CHATS[3]], ["good", "dull"]
    policy_texts = [render_prompt(chat_tok, p) for p in prompts]
    scores = head(prompts, responses, prompt_texts=policy_texts)
    # The reward model's template, not the policy's: "user the film was assistant good".
    rendered = [
        rm.tokenizer.apply_chat_template(with_response(p, r), tokenize=False)
        for p, r in zip(prompts, responses, strict=True)
    ]
    assert rendered[0] == "user the film was assistant good "
    want = _direct_logits(rm_path, rendered, add_special=False)[:, 1]
    assert scores == pytest.approx(want.tolist(), abs=1e-5)
    # Without a template the model reads the text the policy saw, then the response.
    plain = RewardModel(rm_path, separator=" ", use_chat_template=False)
    got = plain.head(1)(prompts, responses, prompt_texts=policy_texts)
    texts = [t + " " + r for t, r in zip(policy_texts, responses, strict=True)]
    assert got == pytest.approx(_direct_logits(rm_path, texts)[:, 1].tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="pass prompt_texts"):
        plain.head(0)(prompts, responses)


def test_reward_model_spec_and_label_errors(rm_path: Path) -> None:
    with pytest.raises(ValueError, match="2 names for 3 labels"):
        parse_reward_model_spec(f"a,b={rm_path}:0,1,1")
    with pytest.raises(ValueError, match="listed twice"):
        parse_reward_model_spec(f"a,b={rm_path}:1,1")
    with pytest.raises(ValueError, match="empty objective name"):
        parse_reward_model_spec(f"a,={rm_path}:0,1")
    unnamed = parse_reward_model_spec(f"{rm_path}:0,1")
    assert [h.name for h in unnamed] == [f"{rm_path.name}:0", f"{rm_path.name}:1"]
    (bad,) = parse_reward_model_spec(f"x={rm_path}:5")
    with pytest.raises(ValueError, match="has 2 outputs; label_index 5 is out of range"):
        bad.load()
    (missing,) = parse_reward_model_spec("x=/no/such/rm:0")
    with pytest.raises(FileNotFoundError, match=r"/no/such/rm.? does not exist"):
        missing(["a"], ["b"])
