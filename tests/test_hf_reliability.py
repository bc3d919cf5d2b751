"""Reliability of long runs: ``resume_from="auto"`` under kills at any moment (during a
checkpoint write too), and a failing reward that stops the run without losing anything.

The kill tests run ``paretoopt train`` in children of ``resume_driver.py`` (imports done
once, one CPU thread) and kill them with SIGKILL at moments drawn from a seeded generator.
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("accelerate")

from hf_fixtures import PROMPTS
from paretoopt.integrations.hf.checkpoint import (
    STATE_FILE,
    clean_interrupted_writes,
    find_latest_checkpoint,
    is_checkpoint,
    resolve_resume,
)

pytestmark = pytest.mark.hf

DRIVER = Path(__file__).with_name("resume_driver.py")


# ----------------------------------------------------------------- resume="auto"


def _fake_checkpoint(folder: Path, step: int) -> Path:
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text(json.dumps({"step": step}))
    return folder


def test_auto_picks_the_newest_complete_checkpoint_or_none(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert resolve_resume("auto", out) is None  # no folder: a fresh start
    out.mkdir()
    assert resolve_resume("auto", out) is None  # empty folder: a fresh start
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        resolve_resume("latest", out)
    _fake_checkpoint(out / "checkpoint-2", 2)
    _fake_checkpoint(out / "checkpoint-10", 10)
    (out / "checkpoint-12" / "policy").mkdir(parents=True)  # no trainer_state.json
    _fake_checkpoint(out / ".checkpoint-14.tmp-0123abcd", 14)  # a write not yet renamed
    assert resolve_resume("auto", out) == out / "checkpoint-10"
    assert resolve_resume("latest", out) == out / "checkpoint-10"


def test_interrupted_writes_are_removed_or_finished(tmp_path: Path) -> None:
    # Killed while writing checkpoint-3: only its temporary folder exists.
    _fake_checkpoint(tmp_path / ".checkpoint-3.tmp-00000001", 3)
    # Killed between the two renames replacing checkpoint-5: old moved away, new complete.
    _fake_checkpoint(tmp_path / ".checkpoint-5.old-00000002", 4)
    _fake_checkpoint(tmp_path / ".checkpoint-5.tmp-00000002", 5)
    # Killed after the replacement, before the old version was removed.
    _fake_checkpoint(tmp_path / "best", 7)
    _fake_checkpoint(tmp_path / ".best.old-00000003", 6)
    done = clean_interrupted_writes(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best", "checkpoint-5"]
    assert json.loads((tmp_path / "checkpoint-5" / STATE_FILE).read_text())["step"] == 5
    assert json.loads((tmp_path / "best" / STATE_FILE).read_text())["step"] == 7
    assert "checkpoint-5" in done and ".checkpoint-3.tmp-00000001" in done
    # An old version whose replacement never got written is put back.
    _fake_checkpoint(tmp_path / ".checkpoint-9.old-00000004", 9)
    clean_interrupted_writes(tmp_path)
    assert is_checkpoint(tmp_path / "checkpoint-9")
    assert find_latest_checkpoint(tmp_path) == tmp_path / "checkpoint-9"


# ------------------------------------------------------------- kills and restarts


class Driver:
    """A ``resume_driver.py`` process: start runs, wait for them, read their exit codes."""

    def __init__(self, cwd: Path) -> None:
        self.log = open(cwd / "driver.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(DRIVER)],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        self.replies: queue.Queue[dict] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.replies.put(json.loads(line))

    def _reply(self, timeout: float) -> dict:
        try:
            return self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no reply in {timeout} s; see {self.log.name}") from None

    def start(self, argv: list[str], slow_write: float = 0.0) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "slow_write": slow_write}) + "\n")
        self.proc.stdin.flush()
        return int(self._reply(timeout=180)["pid"])  # the first run waits for the imports

    def wait(self, timeout: float = 120) -> int:
        return int(self._reply(timeout)["rc"])

    def poll(self, timeout: float = 0.0) -> int | None:
        """The exit code if the run ends within ``timeout`` seconds, else None."""
        try:
            return int(self.replies.get(timeout=timeout)["rc"])
        except queue.Empty:
            return None

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _train_argv(tiny_lm: Path, prompts: Path, out: Path, steps: int) -> list[str]:
    return [
        "--policy", str(tiny_lm), "--prompts", str(prompts),
        "--reward", "length:8:0:1:words", "--reward", "length",
        "--steps", str(steps), "--batch-size", "8", "--mini-batch-size", "4",
        "--ppo-epochs", "1", "--max-new-tokens", "8", "--lr", "3e-3", "--kl-coef", "0.05",
        "--save-every", "1", "--output-dir", str(out), "--resume", "auto",
        "--no-progress", "--cpu",
    ]  # fmt: skip


def _temporaries(out: Path) -> list[Path]:
    return sorted(out.glob(".checkpoint-*.tmp-*")) if out.is_dir() else []


def _kill_during_write(driver: Driver, argv: list[str], out: Path, nth: int) -> int:
    """Start a run with slow checkpoint writes; SIGKILL it once the temporary folder of its
    ``nth`` checkpoint write exists. Returns the exit code (0 if the run ended first);
    asserts that a kill left a half-written folder and no checkpoint of that step."""
    before = set(_temporaries(out))
    pid = driver.start(argv, slow_write=1.0)
    seen: list[Path] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        rc = driver.poll()
        if rc is not None:
            return rc
        seen += [p for p in _temporaries(out) if p not in before and p not in seen]
        if len(seen) >= nth:
            os.kill(pid, signal.SIGKILL)
            rc = driver.wait()
            assert rc == -signal.SIGKILL
            assert seen[-1].is_dir() and not (seen[-1] / STATE_FILE).exists()  # mid-write
            step = seen[-1].name.split(".")[1]  # ".checkpoint-N.tmp-TAG"
            assert not is_checkpoint(out / step)
            return rc
        time.sleep(0.005)
    raise AssertionError("the run neither wrote a checkpoint nor ended in 120 s")


def _kill_at_random(driver: Driver, argv: list[str], delay: float) -> int:
    pid = driver.start(argv)
    rc = driver.poll(timeout=delay)
    if rc is not None:
        return rc  # it finished before the kill
    os.kill(pid, signal.SIGKILL)
    return driver.wait()


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _comparable(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def _tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = {}
    for name in ("policy/model.safetensors", "value_heads.safetensors"):
        out.update({f"{name}:{k}": v for k, v in load_file(str(checkpoint / name)).items()})
    return out


def _kill_loop(tiny_lm: Path, tmp_path: Path, *, steps: int, plan: list[str], seed: int) -> None:
    """Restart with ``--resume auto`` after each kill of ``plan`` ("write": during a
    checkpoint write, "random": after a seeded random delay), then let the last run
    finish; metrics and parameters must equal those of a run never interrupted."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    rng = random.Random(seed)
    driver = Driver(tmp_path)
    try:
        straight = tmp_path / "straight"
        driver.start(_train_argv(tiny_lm, prompts, straight, steps))
        began = time.monotonic()
        assert driver.wait() == 0
        duration = time.monotonic() - began  # a whole run, as a scale for the kill times
        out = tmp_path / "killed"
        argv = _train_argv(tiny_lm, prompts, out, steps)
        codes = []
        for kind in plan:
            if kind == "write":  # the second write: a complete checkpoint precedes it
                codes.append(_kill_during_write(driver, argv, out, nth=2))
            else:
                codes.append(_kill_at_random(driver, argv, rng.uniform(0.1, 0.6) * duration))
            if codes[-1] == 0:
                break  # the run finished before this kill
        if codes[-1] != 0:
            driver.start(argv)
            assert driver.wait() == 0
    finally:
        driver.close()
    assert codes[0] == -signal.SIGKILL
    assert not _temporaries(out)  # the restarts removed what the killed writes left

    want, got = _read_jsonl(straight / "metrics.jsonl"), _read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in got] == list(range(1, steps + 1))
    assert [_comparable(m) for m in got] == [_comparable(m) for m in want]
    final_a, final_b = straight / f"checkpoint-{steps}", out / f"checkpoint-{steps}"
    history_a = json.loads((final_a / STATE_FILE).read_text())["history"]
    history_b = json.loads((final_b / STATE_FILE).read_text())["history"]
    assert [_comparable(m) for m in history_b] == [_comparable(m) for m in history_a]
    tensors_a, tensors_b = _tensors(final_a), _tensors(final_b)
    assert tensors_a.keys() == tensors_b.keys()
    for key, value in tensors_a.items():
        assert torch.equal(value, tensors_b[key]), key


def test_kills_during_a_write_and_at_random_then_resume_auto_equals_one_run(
    tiny_lm: Path, tmp_path: Path
) -> None:
    _kill_loop(tiny_lm, tmp_path, steps=4, plan=["write", "random"], seed=0)


@pytest.mark.slow
def test_many_kills_then_resume_auto_equals_one_run(tiny_lm: Path, tmp_path: Path) -> None:
    plan = ["write", "random", "random", "write", "random", "random", "write"]
    _kill_loop(tiny_lm, tmp_path, steps=10, plan=plan, seed=1)


def test_auto_starts_fresh_over_what_a_killed_run_logged(tiny_lm: Path, tmp_path: Path) -> None:
    from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer, length_reward

    out = tmp_path / "run"
    out.mkdir()
    # A run killed before its first checkpoint: a logged step, a line cut short, a write.
    (out / "metrics.jsonl").write_text('{"step": 1, "kl": 0.5}\n{"step": 2, "k')
    _fake_checkpoint(out / ".checkpoint-2.tmp-0badc0de", 2)
    cfg = MOPPOConfig(
        steps=1, batch_size=4, mini_batch_size=4, ppo_epochs=1, max_new_tokens=4,
        output_dir=str(out), resume_from="auto", progress=False, save_final=False,
    )  # fmt: skip
    trainer = MOPPOTrainer(cfg, str(tiny_lm), prompts=PROMPTS, rewards=[length_reward])
    assert trainer.resume_dir is None and trainer.global_step == 0
    assert not _temporaries(out)
    history = trainer.train()
    lines = _read_jsonl(out / "metrics.jsonl")
    assert [m["step"] for m in lines] == [1] and lines[0]["kl"] == history[0]["kl"]


# ------------------------------------------------------------------ failing rewards


BATCH = ["the film was", "this movie is", "the actor was very", "a story with"]


def _fine(prompts, responses):
    return [0.5] * len(responses)


def _bad_on_actor(kind: str):
    """A reward that goes wrong on the prompt about the actor (index 2 of BATCH)."""

    def reward(prompts, responses):
        out: list = [0.5] * len(responses)
        for row, prompt in enumerate(prompts):
            if "actor" in prompt and kind != "wrong_length":
                if kind == "raise":
                    raise ValueError("cannot score this one")
                out[row] = {"nan": float("nan"), "inf": float("inf"), "text": "n/a"}[kind]
        return out[:-1] if kind == "wrong_length" else out

    return reward


@pytest.mark.parametrize(
    ("kind", "row", "fragment"),
    [
        ("raise", 2, "raised ValueError: cannot score this one"),
        ("nan", 2, "returned a non-finite value (nan)"),
        ("inf", 2, "returned a non-finite value (inf)"),
        ("text", 2, "returned 'n/a' (str), not a number"),
        ("wrong_length", None, "returned 3 values for 4 responses"),
    ],
)
def test_a_failing_reward_names_itself_the_step_and_the_prompt(
    kind: str, row: int | None, fragment: str
) -> None:
    from paretoopt.integrations.hf.rewards import RewardError, score_batch

    responses = ["good", "bad", "very long", "fun"]
    fns = [_fine, _bad_on_actor(kind)]
    with pytest.raises(RewardError) as info:
        score_batch(fns, ["fine", "judge"], BATCH, responses, step=7)
    err = info.value
    assert (err.name, err.index, err.step, err.prompt_index) == ("judge", 1, 7, row)
    message = str(err)
    assert message.startswith("reward 'judge' (objective 1) failed at step 7 on ")
    assert fragment in message
    if row is None:
        assert "on the batch of 4 prompts" in message and err.prompt is None
    else:
        shown = "on prompt 2 of the batch of 4 (prompt 'the actor was very', response 'very long')"
        assert shown in message
        assert err.prompt == "the actor was very"


def test_a_raise_on_whole_batches_only_names_no_prompt() -> None:
    from paretoopt.integrations.hf.rewards import RewardError, score_batch

    seen: list[list[str]] = []

    def batch_only(prompts, responses, prompt_texts):
        seen.append(list(prompt_texts))
        if len(prompts) > 1:
            raise RuntimeError("service unavailable")
        return [1.0]

    with pytest.raises(RewardError) as info:
        score_batch([batch_only], ["remote"], BATCH, ["a"] * 4, step=3, prompt_texts=BATCH)
    assert info.value.prompt_index is None
    assert "on the batch of 4 prompts: raised RuntimeError: service unavailable (no prompt" in str(
        info.value
    )
    assert seen == [BATCH, *([p] for p in BATCH)]  # each prompt alone, with its own text


def _good_rate(prompts, responses):
    return [r.split().count("good") / max(1, len(r.split())) for r in responses]


def test_a_reward_failing_mid_run_keeps_the_last_checkpoint_and_resume_equals_one_run(
    tiny_lm: Path, tmp_path: Path
) -> None:
    from paretoopt.integrations.hf import MOPPOConfig, MOPPOTrainer, make_length_reward
    from paretoopt.integrations.hf.rewards import RewardError

    length = make_length_reward(scale=8, unit="words")
    calls = {"n": 0}

    def flaky(prompts, responses):  # _good_rate, but NaN on prompt 1 of step 3
        calls["n"] += 1
        out = _good_rate(prompts, responses)
        if calls["n"] == 3:
            out[1] = float("nan")
        return out

    def run(out: Path, reward, resume: str | None = None) -> MOPPOTrainer:
        cfg = MOPPOConfig(
            steps=4, batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=6,
            learning_rate=3e-3, output_dir=str(out), save_every=1, save_final=False,
            resume_from=resume, progress=False,
        )  # fmt: skip
        return MOPPOTrainer(cfg, str(tiny_lm), prompts=PROMPTS, rewards=[length, reward],
                            reward_names=["len", "good"])  # fmt: skip

    straight = run(tmp_path / "straight", _good_rate)
    straight.train()

    out = tmp_path / "failing"
    failing = run(out, flaky)
    with pytest.raises(RewardError) as info:
        failing.train()
    err = info.value
    assert (err.name, err.step, err.prompt_index) == ("good", 3, 1)
    assert str(err).startswith("reward 'good' (objective 1) failed at step 3 on prompt 1 of ")
    assert err.prompt in PROMPTS and repr(err.prompt) in str(err)
    # The step failed before its update: its checkpoint is not written, the one before is
    # whole, nothing half-written is left, and the log holds the completed steps only.
    assert find_latest_checkpoint(out) == out / "checkpoint-2"
    assert not (out / "checkpoint-3").exists() and not _temporaries(out)
    assert [m["step"] for m in _read_jsonl(out / "metrics.jsonl")] == [1, 2]

    fixed = run(out, _good_rate, resume="auto")
    assert fixed.global_step == 2
    history = fixed.train()
    assert [_comparable(m) for m in history] == [_comparable(m) for m in straight.history]
    want = straight.unwrapped.state_dict()
    for key, value in fixed.unwrapped.state_dict().items():
        assert torch.equal(value, want[key]), key
