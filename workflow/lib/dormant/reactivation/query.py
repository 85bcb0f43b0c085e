"""Query-based black-box re-activation (QRA; docs/methods.md section 7; Zhu, Liang & Wu 2024, section 5.2).

A Square-Attack random search (Andriushchenko et al. 2020) for one *universal* perturbation delta,
using only the defended model's output scores:

* init: vertical stripes, every (channel, column) set to +-rho at random;
* each iteration redraws one random square window (side round(sqrt(p * H * W)), p halving on
  Square Attack's schedule) to a random +-rho per channel, so the window really changes;
* the candidate is kept if the summed -log p_t over the fixed batch drops;
* one query = one forward pass of the whole batch; the search stops at the query budget or as soon
  as the batch ASR exceeds ``early_stop``.

The attack talks to the model only through :class:`ScoreOracle`, which runs under
``torch.inference_mode`` and returns detached probabilities, so it cannot use gradients; it also
counts the queries.

L2 budget: the same sign search on the largest cube inside the L2 ball (every entry +-rho/sqrt(d),
d = C*H*W, so ||delta||_2 = rho exactly). This is a deviation: Square Attack's own L2 update
(moving mass between window pairs) is not implemented.

Running the attack on clean images instead of triggered ones gives the query-based gUAA baseline.
"""

from __future__ import annotations

import math

import torch
from tqdm import tqdm

from dormant.analysis.metrics import attack_success_rate, poisoned_test_index, predict
from dormant.data.augment import to_float
from dormant.reactivation.delta import attack_images

# Square Attack's p schedule, for a 10,000-iteration run: p_init is halved after each of these
# iterations (rescaled proportionally for other budgets).
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


class QueryBudgetExceeded(RuntimeError):
    pass


class ScoreOracle:
    """Scores-only access to a classifier: softmax probabilities of a batch, without gradients.

    Every call is one query (one forward pass of the batch it gets) and is counted; ``budget``
    makes an extra call fail instead of silently overspending."""

    def __init__(self, model: torch.nn.Module, budget: int | None = None):
        self.__model = model.eval()
        self.budget = budget
        self.queries = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.budget is not None and self.queries >= self.budget:
            raise QueryBudgetExceeded(f"query budget of {self.budget} spent")
        self.queries += 1
        with torch.inference_mode():
            return self.__model(x).float().softmax(1)


def p_schedule(p_init: float, it: int, budget: int) -> float:
    """Square Attack's window fraction at iteration ``it`` of a ``budget``-iteration run."""
    i = int(it / max(budget, 1) * 10000)
    halvings = sum(i > h for h in P_HALVINGS)
    return p_init / 2**halvings


def stripes(shape, magnitude: float, generator: torch.Generator) -> torch.Tensor:
    """Vertical stripes: one random sign per (channel, column), constant along each column."""
    c, h, w = shape
    signs = torch.randint(0, 2, (c, 1, w), generator=generator).float() * 2 - 1
    return (signs * magnitude).expand(c, h, w).contiguous()


def entry_magnitude(shape, norm: str, eps: float) -> float:
    if norm == "linf":
        return eps
    if norm == "l2":
        return eps / math.sqrt(math.prod(shape))
    raise ValueError(f"unknown norm {norm!r} (linf or l2)")


def margin_loss(probs: torch.Tensor, target: int) -> float:
    """Summed -log p_t over the batch (the quantity the search drives down)."""
    return float(-(probs[:, target].clamp_min(1e-12)).log().sum())


def square_search(oracle: ScoreOracle, x: torch.Tensor, target: int, *, norm="linf", eps=0.05, budget=10000,
                  p_init=0.05, early_stop=0.99, seed=0, snapshots=(), desc="QRA") -> dict:
    """Universal Square-Attack search on the float batch ``x`` (already triggered for QRA).

    Returns delta, queries spent, the per-query curve (queries, batch ASR, loss of the kept delta)
    and ``snapshots``: the kept delta after each requested number of queries."""
    shape = tuple(x.shape[1:])
    c, h, w = shape
    g = torch.Generator().manual_seed(seed)
    mag = entry_magnitude(shape, norm, eps)
    delta = stripes(shape, mag, g).to(x.device)
    if eps == 0:
        delta.zero_()
    want = sorted({int(q) for q in snapshots})
    snaps: dict[int, torch.Tensor] = {}
    curve = []

    def record(probs, loss):
        asr = float((probs.argmax(1) == target).float().mean())
        curve.append((oracle.queries, asr, loss))
        while want and oracle.queries >= want[0]:
            snaps[want.pop(0)] = delta.clone()
        return asr

    asr = 0.0
    if budget >= 1:
        probs = oracle((x + delta).clamp(0, 1))
        loss = margin_loss(probs, target)
        asr = record(probs, loss)
    it = 0
    bar = tqdm(total=budget, desc=desc, disable=None, mininterval=30)
    while oracle.queries < budget and asr <= early_stop:
        p = p_schedule(p_init, it, budget)
        s = min(max(int(round(math.sqrt(p * h * w))), 1), min(h, w) - 1)
        i0 = int(torch.randint(0, h - s + 1, (1,), generator=g))
        j0 = int(torch.randint(0, w - s + 1, (1,), generator=g))
        window = delta[:, i0 : i0 + s, j0 : j0 + s]
        new = window
        while bool((new == window).all()) and mag > 0:  # redraw until at least one channel flips
            new = (torch.randint(0, 2, (c, 1, 1), generator=g).float() * 2 - 1).to(x.device) * mag
            new = new.expand(c, s, s)
        cand = delta.clone()
        cand[:, i0 : i0 + s, j0 : j0 + s] = new
        cprobs = oracle((x + cand).clamp(0, 1))
        closs = margin_loss(cprobs, target)
        if closs < loss:
            delta, loss, probs = cand, closs, cprobs
        asr = record(probs, loss)
        it += 1
        bar.update(1)
    bar.close()
    for q in want:  # stopped before these: the final delta is what the attacker would hold then
        snaps[q] = delta.clone()
    return {"delta": delta, "queries": oracle.queries, "curve": curve, "snapshots": snaps,
            "stopped_early": asr > early_stop}


def queries_to_reach(curve, level: float) -> int | None:
    """The first query count at which the batch ASR reached ``level`` (None if never)."""
    for q, asr, _ in curve:
        if asr >= level:
            return q
    return None


def run_query_attack(model, train, test, attack, cfg: dict, seed: int) -> tuple[dict, dict]:
    """QRA and the query-based gUAA against one model; test ASR at the ``checkpoints`` query counts."""
    target = attack.target
    idx = attack_images(train, target, cfg["batch_size"], seed)
    x_clean = to_float(train.x[idx.to(train.x.device)])
    tidx = poisoned_test_index(test.y, target).to(test.x.device)
    x_test = test.x[tidx]
    checkpoints = sorted(int(q) for q in cfg["checkpoints"])
    common = dict(norm=cfg["norm"], eps=cfg["eps"], budget=cfg["budget"], p_init=cfg["p_init"],
                  early_stop=cfg["early_stop"], seed=seed, snapshots=checkpoints)
    out = {"budget": {"norm": cfg["norm"], "eps": cfg["eps"], "queries": cfg["budget"]},
           "batch_size": len(idx)}
    deltas = {}
    for name, x_opt, transform in (("reactivated", attack.apply(x_clean), attack.apply), ("guaa", x_clean, None)):
        oracle = ScoreOracle(model, budget=cfg["budget"])
        res = square_search(oracle, x_opt, target, desc=f"QRA-{name}", **common)

        def with_delta(d, transform=transform):
            return lambda x: ((transform(x) if transform else x) + d).clamp(0, 1)

        out[name] = {
            "queries": res["queries"],
            "stopped_early": res["stopped_early"],
            "asr": attack_success_rate(predict(model, x_test, with_delta(res["delta"])), target),
            "asr_at": {str(q): attack_success_rate(predict(model, x_test, with_delta(res["snapshots"][q])), target)
                       for q in checkpoints},
            "curve": [[q, round(a, 6), round(loss, 6)] for q, a, loss in res["curve"]],
            "linf": float(res["delta"].abs().max()), "l2": float(res["delta"].norm()),
        }
        deltas[f"delta_{name}"] = res["delta"].contiguous()
    return out, deltas
