"""The query attack's fast path (docs/methods.md section 7.3, "Implementation"): random draws made up front in
the iterative order, decisions on the device with a roll-back to the early stop, joint QRA + gUAA forward passes,
and the fast-precision oracle's calibration against fp32 (CPU autocast runs bf16)."""

import contextlib
import itertools
import math

import pytest
import torch
from dormant.attacks import build_attack
from dormant.data.augment import to_float
from dormant.nets import build_model
from dormant.reactivation import query
from dormant.reactivation.query import (
    QueryBudgetExceeded,
    ScoreOracle,
    p_schedule,
    run_query_attack,
    square_search,
    square_search_joint,
)


def _bf16(device):
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _net(seed=0):
    torch.manual_seed(seed)
    return build_model("cnn_tiny", 4)


class Counting(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.calls, self.rows = net, 0, 0

    def forward(self, x):
        self.calls += 1
        self.rows += len(x)
        return self.net(x)


class RedMeansTarget(torch.nn.Module):
    """The target's logit grows with the red channel's mean, so the batch ASR climbs during a search."""

    def forward(self, z):
        t = 100 * (z[:, 0].mean((1, 2)) - z[:, 2].mean((1, 2)) - 0.05)
        return torch.stack([t, *[torch.zeros_like(t)] * 3], 1)


def _same(a, b):
    assert a["queries"] == b["queries"] and a["stopped_early"] == b["stopped_early"]
    assert a["curve"] == b["curve"]
    assert torch.equal(a["delta"], b["delta"])
    assert a["snapshots"].keys() == b["snapshots"].keys()
    assert all(torch.equal(a["snapshots"][q], b["snapshots"][q]) for q in a["snapshots"])


def test_windows_are_drawn_in_the_iterative_order():
    """draw_windows gives the corner, side and signs an iteration-by-iteration loop draws, then the flips."""
    budget, shape = 40, (3, 10, 12)
    windows, signs, flips = query.draw_windows(shape, 0.3, budget, torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(4)
    for it in range(budget - 1):
        s = min(max(round(math.sqrt(p_schedule(0.3, it, budget) * 120)), 1), 9)
        i0 = int(torch.randint(0, 10 - s + 1, (1,), generator=g))
        j0 = int(torch.randint(0, 12 - s + 1, (1,), generator=g))
        assert windows[it] == (i0, j0, s)
        assert torch.equal(signs[it], torch.randint(0, 2, (3, 1, 1), generator=g).float() * 2 - 1)
    assert windows[0][2] == 6 and windows[-1][2] == 1  # the schedule shrinks the window
    assert flips.shape == (budget - 1, 3, 1, 1) and torch.all(flips.abs() == 1)
    assert not torch.any(torch.all(flips == 1, 1))  # never the empty flip set


def test_flip_replaces_the_redraw_loop_with_the_same_distribution():
    """Redrawing until the signs differ from the window's v is uniform over the 2^C - 1 other sign vectors;
    v * flip over the flip codes 1 .. 2^C - 1 (drawn uniformly) reaches each of them exactly once."""
    c = 3
    code = torch.arange(1, 2**c)
    flips = 1 - 2 * ((code[:, None] >> torch.arange(c)) & 1)
    for v in itertools.product([-1, 1], repeat=c):
        reached = {tuple((torch.tensor(v) * f).tolist()) for f in flips}
        assert len(reached) == 2**c - 1 and v not in reached


def test_results_do_not_depend_on_how_often_the_host_checks(synthetic):
    """Checking early_stop every 7 queries (and rolling back to the crossing) equals checking every query."""
    x = to_float(synthetic["train"].x[:16])
    kw = dict(eps=0.3, budget=80, seed=0, snapshots=[3, 10, 30, 79])
    full = square_search(ScoreOracle(RedMeansTarget()), x, 0, early_stop=1.0, **kw)
    level = sorted({a for _, a, _ in full["curve"]})[2]
    every = square_search(ScoreOracle(RedMeansTarget()), x, 0, early_stop=level, check_every=1, **kw)
    assert 10 < every["queries"] < 79 and every["stopped_early"]
    for k in (7, 64):
        _same(square_search(ScoreOracle(RedMeansTarget()), x, 0, early_stop=level, check_every=k, **kw), every)
    _same(square_search(ScoreOracle(RedMeansTarget()), x, 0, early_stop=1.0, check_every=9, **kw), full)


def _joint_inputs(synthetic):
    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 0}, (3, 16, 16), 4)
    x = to_float(synthetic["train"].x[:16])
    return [atk.apply(x), x]


def test_joint_search_equals_separate_searches_and_respects_each_budget(synthetic):
    net = Counting(_net())
    xs = _joint_inputs(synthetic)
    kw = dict(eps=0.1, budget=30, seed=2, snapshots=[5, 30], early_stop=1.0)
    apart = [square_search(ScoreOracle(net, budget=30), x, 0, **kw) for x in xs]
    assert net.calls == 60
    oracles = [ScoreOracle(net, budget=30) for _ in xs]
    joint = square_search_joint(oracles, xs, [0, 0], **kw)
    assert net.calls == 60 + 30 and net.rows == 2 * 30 * 16 + 30 * 32  # one pass of both batches per query
    assert [o.queries for o in oracles] == [30, 30]
    for a, b in zip(apart, joint):
        _same(a, b)
    with pytest.raises(QueryBudgetExceeded):  # each oracle still refuses its 31st query
        oracles[1](xs[1])


def test_joint_search_with_one_search_stopping_early(synthetic):
    """The search that stops leaves the batch; the other one goes on with its own decisions and count."""
    x = to_float(synthetic["train"].x[:16])
    xs = [x, x.flip(0)]
    full = square_search(ScoreOracle(RedMeansTarget()), xs[0], 0, eps=0.3, budget=60, early_stop=1.0, seed=0)
    level = sorted({a for _, a, _ in full["curve"]})[2]
    kw = dict(eps=0.3, budget=60, seed=0, early_stop=level, snapshots=[5, 59])
    net = Counting(RedMeansTarget())
    targets = [0, 3]  # class 3 ties with 1 and 2 at best (argmax takes the first): that search never stops
    apart = [square_search(ScoreOracle(net), x_, t, **kw) for x_, t in zip(xs, targets)]
    assert apart[0]["stopped_early"] and not apart[1]["stopped_early"] and apart[1]["queries"] == 60
    joint = square_search_joint([ScoreOracle(net), ScoreOracle(net)], xs, targets, check_every=8, **kw)
    for a, b in zip(apart, joint):
        _same(a, b)


def test_joint_search_needs_one_model(synthetic):
    xs = _joint_inputs(synthetic)
    with pytest.raises(ValueError, match="same model"):
        square_search_joint([ScoreOracle(_net(0)), ScoreOracle(_net(1))], xs, [0, 0], budget=3)


def _qcfg(**kw):
    return {"norm": "linf", "eps": 0.05, "budget": 25, "batch_size": 16, "p_init": 0.05, "early_stop": 0.99,
            "checkpoints": [5, 20], "precision": "auto", "calibration": 10, "min_agreement": 1.0,
           "cuda_graph": True, "joint": True, **kw}


def test_run_query_attack_joint_equals_apart(synthetic):
    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 0}, (3, 16, 16), 4)
    net = Counting(_net())
    train, test = synthetic["train"], synthetic["test"]
    joint = run_query_attack(net, train, test, atk, _qcfg(joint=True, early_stop=1.0), seed=0)
    calls = net.calls
    apart = run_query_attack(net, train, test, atk, _qcfg(joint=False, early_stop=1.0), seed=0)
    assert (net.calls - calls) - calls == 25  # 2 x 25 passes apart, 25 joint (the test-set evaluation is the same)
    assert joint[0] == apart[0]
    assert all(torch.equal(joint[1][k], apart[1][k]) for k in joint[1])


class Recorder(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.seen = net, []

    def forward(self, x):
        if not torch.is_autocast_enabled("cpu"):
            self.seen.append(x.clone())
        return self.net(x)


def test_fast_oracle_calibration_counts_agreeing_decisions(synthetic):
    """Calibrating for the whole budget scores every query in bf16 (CPU autocast) and fp32, decisions from fp32:
    the search is fp32's, and the agreement it reports equals a recount of both precisions' accept decisions
    on the candidates it queried. On tiny models bf16 disagrees on a few near-ties (the CPU default is fp32)."""
    x = _joint_inputs(synthetic)[0]
    kw = dict(eps=0.1, budget=40, seed=1, early_stop=1.0)
    net = _net()
    ref = square_search(ScoreOracle(net), x, 0, **kw)
    rec = Recorder(net)
    audit = square_search(ScoreOracle(rec, precision="fast", fast=_bf16), x, 0, calibration=40, **kw)
    assert len(rec.seen) == 40 and audit["curve"] == ref["curve"] and torch.equal(audit["delta"], ref["delta"])

    def loss(z, fast):
        with torch.inference_mode(), _bf16("cpu") if fast else contextlib.nullcontext():
            return query.margin_loss(net(z.contiguous(memory_format=torch.channels_last)).float().softmax(1), 0)

    kept = {f: loss(rec.seen[0], f) for f in (False, True)}
    agreed = 0
    for z in rec.seen[1:]:
        new = {f: loss(z, f) for f in (False, True)}
        accept = {f: bool(new[f] < kept[f]) for f in (False, True)}
        agreed += accept[False] == accept[True]
        if accept[False]:
            kept = new
    assert audit["precision"] == {"mode": "fast" if agreed == 39 else "fp32", "calibration": 40, "agreed": agreed}
    assert 25 <= agreed <= 39  # bf16 decides most, not all, as fp32 does


def test_fast_oracle_goes_on_in_the_fast_precision_after_agreement(synthetic):
    """Passing calibration (here: min_agreement 0.5), the search continues in bf16: it starts as fp32's,
    queries once per query after calibration, and keeps improving."""
    x = _joint_inputs(synthetic)[0]
    kw = dict(eps=0.1, budget=40, seed=1, early_stop=1.0)
    ref = square_search(ScoreOracle(_net()), x, 0, **kw)
    net = Counting(_net())
    fast = square_search(ScoreOracle(net, precision="fast", fast=_bf16), x, 0, calibration=8, min_agreement=0.5,
                         **kw)
    assert fast["precision"]["mode"] == "fast" and net.calls == 8 * 2 + 32
    assert fast["curve"][:8] == ref["curve"][:8] and fast["queries"] == 40
    assert fast["curve"][-1][2] < fast["curve"][0][2]
    # a model autocast leaves in fp32 (no matmul or conv) agrees on every decision: fast, and fp32's search
    # (the losses differ in the last bits: channels-last changes the order of the mean's sum)
    x16 = to_float(synthetic["train"].x[:16])
    kw = dict(eps=0.3, budget=30, seed=0, early_stop=1.0)
    exact = square_search(ScoreOracle(RedMeansTarget()), x16, 0, **kw)
    same = square_search(ScoreOracle(RedMeansTarget(), precision="fast", fast=_bf16), x16, 0, calibration=5, **kw)
    assert same["precision"] == {"mode": "fast", "calibration": 5, "agreed": 4}
    assert [a for _, a, _ in same["curve"]] == [a for _, a, _ in exact["curve"]]
    assert [loss for *_, loss in same["curve"]] == pytest.approx([loss for *_, loss in exact["curve"]], rel=1e-5)
    assert torch.equal(same["delta"], exact["delta"])


class Disagreeing:
    """A 'fast' context under which the model's scores are noise: its decisions cannot agree with fp32."""

    on = False

    def __call__(self, device):
        @contextlib.contextmanager
        def ctx():
            Disagreeing.on = True
            try:
                yield
            finally:
                Disagreeing.on = False

        return ctx()


class NoisyWhenFast(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.g = net, torch.Generator().manual_seed(0)

    def forward(self, x):
        out = self.net(x)
        return out + 50 * torch.randn(out.shape, generator=self.g) if Disagreeing.on else out


def test_fast_oracle_falls_back_to_fp32_when_calibration_disagrees(synthetic):
    xs = _joint_inputs(synthetic)
    kw = dict(eps=0.1, budget=30, seed=1, early_stop=1.0, snapshots=[10, 30])
    ref = square_search(ScoreOracle(_net()), xs[0], 0, **kw)
    res = square_search(ScoreOracle(NoisyWhenFast(_net()), precision="fast", fast=Disagreeing()), xs[0], 0,
                        calibration=10, **kw)
    assert res["precision"]["mode"] == "fp32" and res["precision"]["agreed"] < 9
    _same(res, ref)


def test_precision_auto_is_fp32_on_the_cpu():
    assert ScoreOracle(_net(), precision="auto").precision == "fp32"
    with pytest.raises(ValueError, match="query.precision"):
        ScoreOracle(_net(), precision="half")
