"""Heartbeat lines (dormant.progress): format, rate limit, terminal suppression, lazy fields, ETA."""

from __future__ import annotations

import io
import re

import pytest
import torch
from dormant.progress import ENV, Heartbeat, clock_format, interval_from_env, read_later


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


class Log(io.StringIO):
    def __init__(self, tty=False):
        super().__init__()
        self.tty = tty

    def isatty(self):
        return self.tty


def lines(stream):
    return stream.getvalue().splitlines()


def test_line_format_rate_and_eta_by_hand():
    clock, log = Clock(), Log()
    hb = Heartbeat("train badnets", total=1000, unit="img", interval=30, stream=log, clock=clock)
    clock.t += 40.0
    hb.update(250, loss=1.23456)
    # 250 images in 40 s: 6.25 img/s; 750 left -> 120 s
    assert lines(log) == ["[heartbeat] train badnets 250/1000 (25.0%) 6.25 img/s elapsed 0:00:40 eta 0:02:00 "
                          "loss=1.235"]


def test_eta_counts_from_the_resumed_position():
    clock, log = Clock(), Log()
    hb = Heartbeat("train", total=100, unit="img", initial=60, interval=0, stream=log, clock=clock)
    clock.t += 10.0
    hb.update(10)  # 10 images in 10 s since the resume; 30 left -> 30 s
    assert lines(log) == ["[heartbeat] train 70/100 (70.0%) 1 img/s elapsed 0:00:10 eta 0:00:30"]


def test_clock_format():
    assert clock_format(0) == "0:00:00"
    assert clock_format(3725.4) == "1:02:05"
    assert clock_format(None) == "?" and clock_format(float("inf")) == "?"


def test_rate_limit_with_a_fake_clock():
    clock, log = Clock(), Log()
    hb = Heartbeat("q", total=100, interval=30, stream=log, clock=clock)
    for _ in range(10):  # 10 updates in 29 s: nothing yet
        clock.t += 2.9
        hb.update(1)
    assert lines(log) == []
    clock.t += 1.1  # 30 s since the start
    hb.update(1)
    assert len(lines(log)) == 1 and " 11/100 " in lines(log)[0]
    clock.t += 29.0
    hb.update(1)
    assert len(lines(log)) == 1  # 29 s since the last line
    clock.t += 1.0
    hb.update(1)
    assert len(lines(log)) == 2 and " 13/100 " in lines(log)[1]


def test_interval_zero_writes_at_every_update_and_close_writes_once():
    clock, log = Clock(), Log()
    with Heartbeat("x", total=3, interval=0, stream=log, clock=clock) as hb:
        for _ in range(3):
            clock.t += 1
            hb.update(1)
    hb.close()
    out = lines(log)
    assert len(out) == 4
    assert out[2].endswith("eta 0:00:00")
    assert out[3] == "[heartbeat] x 3/3 (100.0%) 1 it/s elapsed 0:00:03 done"


def test_close_line_even_without_updates_and_on_exceptions():
    clock, log = Clock(), Log()
    with pytest.raises(RuntimeError), Heartbeat("y", total=10, interval=30, stream=log, clock=clock) as hb:
        clock.t += 5
        hb.update(2, asr=0.5)
        raise RuntimeError("boom")
    assert lines(log) == ["[heartbeat] y 2/10 (20.0%) 0.4 it/s elapsed 0:00:05 stopped (RuntimeError) asr=0.5"]


def test_silent_on_a_terminal():
    clock, log = Clock(), Log(tty=True)
    hb = Heartbeat("z", total=5, interval=0, stream=log, clock=clock)
    clock.t += 1
    hb.update(1, loss=lambda: pytest.fail("a field was evaluated with no line written"))
    hb.close()
    assert log.getvalue() == ""


def test_callable_fields_only_evaluated_when_a_line_is_written():
    clock, log = Clock(), Log()
    calls = []

    def loss():
        calls.append(1)
        return 0.5

    hb = Heartbeat("w", total=100, interval=30, stream=log, clock=clock)
    for _ in range(20):
        clock.t += 1
        hb.update(1, loss=loss)
    assert calls == [] and lines(log) == []
    clock.t += 10
    hb.update(1, loss=loss)
    assert calls == [1] and lines(log)[0].endswith("loss=0.5")
    # a failing field is shown as such and does not stop the loop
    clock.t += 30
    hb.update(1, loss=lambda: 1 / 0)
    assert lines(log)[1].endswith("loss=<ZeroDivisionError>")


def test_read_later_reads_the_tensor_at_emission():
    t = torch.tensor(2.5, requires_grad=True) * 2
    field = read_later(t)
    assert field() == 5.0


def test_unknown_total_and_no_progress():
    clock, log = Clock(), Log()
    hb = Heartbeat("u", interval=0, stream=log, clock=clock)
    clock.t += 2
    hb.update(0)
    assert lines(log) == ["[heartbeat] u 0 0 it/s elapsed 0:00:02"]
    hb2 = Heartbeat("v", total=4, interval=0, stream=log, clock=clock)
    clock.t += 2
    hb2.update(0)
    assert lines(log)[-1] == "[heartbeat] v 0/4 (0.0%) 0 it/s elapsed 0:00:02 eta ?"


def test_interval_from_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert interval_from_env() == 30.0
    monkeypatch.setenv(ENV, "0")
    assert interval_from_env() == 0.0
    monkeypatch.setenv(ENV, "2.5")
    assert Heartbeat("e", stream=Log()).interval == 2.5
    for bad in ("soon", "-1"):
        monkeypatch.setenv(ENV, bad)
        with pytest.raises(ValueError, match=ENV):
            interval_from_env()


def test_training_loop_writes_heartbeats_and_throughput(capsys, monkeypatch):
    """The training loop's lines reach stderr (captured: not a terminal) and its history has img_per_s."""
    from dormant.data.imageset import ImageSet
    from dormant.training.loop import train

    monkeypatch.setenv(ENV, "0")
    g = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8, generator=g),
                    torch.randint(0, 2, (20,), generator=g), ["a", "b"])
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    hist = train(model, data, {"epochs": 2, "batch_size": 8, "augment": False}, seed=0, desc="train test")
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("[heartbeat]")]
    assert len(err) == 3 * 2 + 1  # three batches per epoch, and the final line
    assert re.match(r"\[heartbeat\] train test 8/40 \(20\.0%\) \S+ img/s elapsed \d:\d\d:\d\d eta \d:\d\d:\d\d "
                    r"epoch=1/2 loss=\S+$", err[0]), err[0]
    assert " 40/40 (100.0%) " in err[-1] and " done " in err[-1] and "train_acc=" in err[-1]
    assert all(h["img_per_s"] > 0 for h in hist)


HB = r"\[heartbeat\] {} (\d+)/(\d+) \(\d+\.\d%\) \S+ {}/s elapsed \d+:\d\d:\d\d (eta \d+:\d\d:\d\d|done)"


def _heartbeats(err: str, label: str, unit: str) -> list:
    return [m for ln in err.splitlines() if (m := re.match(HB.format(re.escape(label), unit), ln))]


@pytest.mark.parametrize("cfg, label, unit, total", [
    ({"type": "anp", "iterations": 3, "batch_size": 16, "holdout": 0.25}, "anp-masks", "it", 3),
    ({"type": "ibau", "rounds": 2, "batch_size": 16}, "i-bau", "img", 2 * 48),
    ({"type": "sau", "epochs": 1, "batch_size": 16}, "sau", "img", 48),
    ({"type": "nc", "epochs_reverse": 1, "batch_size_reverse": 16, "epochs": 1, "batch_size": 16, "holdout": 0.25,
      "class_chunk": 2}, "nc-reverse", "img", 2 * 36),
])
def test_defense_loops_write_heartbeats(backdoored, synthetic, capsys, monkeypatch, cfg, label, unit, total):
    """Each defense's own loop counts its steps up to its total and ends with a final line."""
    import copy

    from dormant.defenses import build_defense
    from dormant.defenses.holdout import split_holdout

    monkeypatch.setenv(ENV, "0")
    _, clean = split_holdout(synthetic["train"], 0.2, seed=7)
    assert len(clean) == 48
    build_defense(cfg).run(copy.deepcopy(backdoored[0]), clean, seed=0)
    found = _heartbeats(capsys.readouterr().err, label, unit)
    assert len(found) >= 2 and {int(m.group(2)) for m in found} == {total}
    assert int(found[-1].group(1)) == total and found[-1].group(3) == "done"


def test_query_and_delta_loops_write_heartbeats(backdoored, synthetic, capsys, monkeypatch):
    from dormant.reactivation.query import ScoreOracle, square_search
    from dormant.reactivation.whitebox import optimise_universal

    monkeypatch.setenv(ENV, "0")
    m = backdoored[0]
    x = synthetic["train"].x[:8]
    res = square_search(ScoreOracle(m, budget=12), x.float() / 255, 0, budget=12, early_stop=2.0, desc="QRA")
    found = _heartbeats(capsys.readouterr().err, "QRA", "query")
    assert [int(f.group(1)) for f in found] == [*range(1, res["queries"] + 1), res["queries"]]
    assert "asr=" in found[0].string and found[-1].group(3) == "done"
    optimise_universal(m, x, 0, epochs=2, steps=1, batch_size=4, desc="RA")
    found = _heartbeats(capsys.readouterr().err, "RA", "img")
    assert [int(f.group(1)) for f in found] == [4, 8, 12, 16, 16] and "loss=" in found[0].string
