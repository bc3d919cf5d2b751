"""The study's task rewards: graded sentiment, cut-off handling, task 2's three rules."""

from __future__ import annotations

import itertools

import pytest
from paretoopt.integrations.study import task_sentiment as ts
from paretoopt.integrations.study import task_support as tsup


def test_length_reward_caps_well_under_the_budget_and_zeroes_cut_off_responses() -> None:
    cfg = ts.SentimentLengthConfig()
    assert cfg.length_cap <= cfg.max_new_tokens // 2
    length = ts.make_length_reward(cfg)
    words = lambda n: " ".join(["was"] * n)  # noqa: E731
    scores = length(["p"] * 5, [words(4), words(16), words(25), words(31), words(32)])
    # 4 words: 0.5; the cap (16 words): 2.0; longer but finished: still 2.0; a response of
    # max_new_tokens words never emitted EOS: 0.
    assert scores == [0.5, 2.0, 2.0, 2.0, 0.0]


def test_net_positive_counts_sentiment_words() -> None:
    assert ts.net_positive("the plot was great and i loved it .") == 2
    assert ts.net_positive("was dull and the music felt so awful .") == -2
    assert ts.net_positive("was great but the cast was dull too .") == 0
    cfg = ts.SentimentLengthConfig()
    assert ts.target_logodds("was great great great great great", cfg) == cfg.max_logodds


def test_sft_corpus_couples_length_and_sentiment_but_keeps_the_minority() -> None:
    cfg = ts.SentimentLengthConfig(n_reviews=2000)
    train, held = ts.split_prompts(cfg)
    assert not set(train) & set(held)
    texts = ts.sft_texts(cfg, train)
    n_clauses = [t.count(" and ") + t.count(" but ") + 1 for t in texts]
    positive = [ts.net_positive(t) > 0 for t in texts]
    long_pos = sum(p and n >= 3 for p, n in zip(positive, n_clauses, strict=True))
    long_all = sum(n >= 3 for n in n_clauses)
    assert 0.05 < long_pos / long_all < 0.3  # long positive reviews exist, a minority
    short_pos = sum(p and n <= 2 for p, n in zip(positive, n_clauses, strict=True))
    assert short_pos / sum(n <= 2 for n in n_clauses) > 0.7


def test_graded_classifier_is_monotone_in_positive_content_on_heldout_prompts() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from paretoopt.integrations.study.artefacts import (
        StudyArtefactConfig,
        build_tokenizer,
        positive_logits,
        train_graded_classifier,
    )

    torch.manual_seed(0)
    cfg = ts.SentimentLengthConfig(n_labelled=2000)
    train, held = ts.split_prompts(cfg)
    tok = build_tokenizer(ts.words())
    small = StudyArtefactConfig(n_embd=32, n_layer=1, rm_steps=150, batch_size=32)
    model = train_graded_classifier(small, tok, ts.labelled_texts(cfg, train))
    means = []
    for k in range(5):  # k positive clauses out of 4, on prompts the classifier never saw
        probes = ts.graded_probe_texts(held, 4, k, 40, seed=1)
        assert all(p.split(" was ")[0] in held or p.split(" felt ")[0] in held for p in probes)
        scores = positive_logits(model, tok, probes)
        means.append(sum(scores) / len(scores))
    gaps = [b - a for a, b in itertools.pairwise(means)]
    assert all(g > 0.3 for g in gaps), means  # graded, not binary after the first adjective
    # More positive clauses keep scoring higher, up to the log-odds cap.
    one = ts.graded_probe_texts(held, 1, 1, 40, seed=2)
    three = ts.graded_probe_texts(held, 3, 3, 40, seed=2)
    assert sum(positive_logits(model, tok, three)) > sum(positive_logits(model, tok, one)) + 20


def test_support_rewards_on_hand_written_replies() -> None:
    cfg = tsup.SupportRepliesConfig()
    helpful, polite, brief = tsup.make_rewards(cfg)
    prompt = tsup.prompt_for(["shipping", "refund"])
    assert tsup.asked_slots(prompt) == ["shipping", "refund"]
    replies = [
        "thank you . it ships monday . refund is ten dollars .",  # complete, polite, short
        "it ships monday . tracking is ab12 . read the faq .",  # one of two; an unasked slot
        "thank you . happy to help . have a nice day . sorry for the wait .",  # padding only
        " ".join(["thank"] * cfg.max_new_tokens),  # cut at the token limit
    ]
    prompts = [prompt] * len(replies)
    assert helpful(prompts, replies) == [1.0, 0.5, 0.0, 0.0]
    assert polite(prompts, replies) == [0.5, -0.5, 1.0, 0.0]
    b = brief(prompts, replies)
    assert b[0] == pytest.approx(1 - 12 / cfg.brevity_words)
    assert b[3] == 0.0
    assert b[0] > b[2]


def test_support_corpus_pulls_the_objectives_apart() -> None:
    cfg = tsup.SupportRepliesConfig(n_replies=1500)
    train, held = tsup.split_prompts(cfg)
    assert not set(train) & set(held) and len(held) >= 30
    texts = tsup.sft_texts(cfg, train)
    fns = tsup.make_rewards(cfg)
    rows = []
    for t in texts:
        prompt, reply = t.split(" agent : ", 1)
        rows.append([f([prompt + " agent :"], [reply])[0] for f in fns])
    complete = [r for r in rows if r[0] == 1.0]
    short_polite_complete = [r for r in rows if r[0] == 1.0 and r[1] > 0.49 and r[2] > 0.33]
    assert 0.05 < len(short_polite_complete) / len(rows) < 0.15
    # Complete replies are mostly curt (negative politeness): helpfulness costs politeness.
    assert sum(r[1] < 0 for r in complete) / len(complete) > 0.6


def test_support_joint_success_means_fewer_than_20_words() -> None:
    """The documented rule: brevity counts for joint success below 20 words, not at 20."""
    from paretoopt.integrations.study import stats

    cfg = tsup.SupportRepliesConfig()
    brief = tsup.make_rewards(cfg)[2]
    thresholds = cfg.success_thresholds
    for words, ok in ((19, 1.0), (20, 0.0), (21, 0.0)):
        (b,) = brief(["p"], [" ".join(["w"] * words)])
        assert stats.joint_success([[1.0, 0.5, b]], thresholds) == ok, words
