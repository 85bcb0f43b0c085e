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
``torch.inference_mode`` and returns detached scores, so it cannot use gradients; it also
counts the queries.

L2 budget: the same sign search on the largest cube inside the L2 ball (every entry +-rho/sqrt(d),
d = C*H*W, so ||delta||_2 = rho exactly). This is a deviation: Square Attack's own L2 update
(moving mass between window pairs) is not implemented.

Running the attack on clean images instead of triggered ones gives the query-based gUAA baseline.

Speed (docs/methods.md section 7.3, "Implementation"): all random draws of a search (window positions,
signs, and the fallback that replaces Square Attack's redraw loop) are made up front on the CPU generator,
the accept/reject decision stays on the device (``torch.where``), and the curve is written to device
buffers read back once; the host only syncs every ``check_every`` queries to test ``early_stop``, and a
search that crossed it inside such a block is rolled back to the query where it did, so the result is the
one an every-query check gives. Several searches against one model (QRA and the query gUAA) can share
each forward pass (:func:`square_search_joint`). The oracle can run the model channels-last in the fast
precision (bf16 autocast on CUDA) after a calibration against fp32, and replay a captured CUDA graph.
"""

from __future__ import annotations

import functools
import math

import torch
from tqdm import tqdm

from dormant import runtime
from dormant.analysis.metrics import attack_success_rate, poisoned_test_index, predict
from dormant.data.augment import to_float
from dormant.progress import Heartbeat
from dormant.reactivation.delta import attack_images

# Square Attack's p schedule, for a 10,000-iteration run: p_init is halved after each of these
# iterations (rescaled proportionally for other budgets).
P_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
PRECISIONS = ("auto", "fast", "fp32")


class QueryBudgetExceeded(RuntimeError):
    pass


def margin_loss(probs: torch.Tensor, target: int) -> torch.Tensor:
    """Summed -log p_t over the batch (the quantity the search drives down), as a 0-d device tensor."""
    return -(probs[:, target].clamp_min(1e-12)).log().sum()


class ScoreOracle:
    """Scores-only access to a classifier: softmax probabilities of a batch, without gradients.

    Every call is one query (one forward pass of the batch it gets) and is counted; ``budget``
    makes an extra call fail instead of silently overspending.

    ``precision`` "fast" lets the search evaluate candidates channels-last under ``fast(device)``
    (default ``runtime.autocast``: bf16 on CUDA) once a calibration showed that its decisions agree with
    fp32 (``exact(device)``); "fp32" never does; "auto" is "fast" on CUDA and "fp32" elsewhere (the CPU
    default is fp32, bit for bit as before). "fast" converts the model to channels-last in place.
    ``cuda_graph`` replays one captured CUDA graph per batch layout (CUDA only; ignored elsewhere)."""

    def __init__(self, model: torch.nn.Module, budget: int | None = None, *, precision: str = "fp32",
                 fast=None, exact=None, cuda_graph: bool = False):
        if precision not in PRECISIONS:
            raise ValueError(f"query.precision: {precision!r} is not one of {', '.join(PRECISIONS)}")
        self.__model = model.eval()
        self.budget = budget
        self.queries = 0
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        if precision == "auto":
            precision = "fast" if device.type == "cuda" else "fp32"
        self.precision = precision
        self._fast = fast or functools.partial(runtime.autocast, fp16=True)  # no gradients
        self._exact = exact or runtime.exact
        self.cuda_graph = bool(cuda_graph)
        self._graphs: dict = {}
        if precision == "fast":
            self.__model.to(memory_format=torch.channels_last)

    def charge(self) -> None:
        """Counts one query; refuses it (before any forward pass) once the budget is spent."""
        if self.budget is not None and self.queries >= self.budget:
            raise QueryBudgetExceeded(f"query budget of {self.budget} spent")
        self.queries += 1

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.charge()
        with torch.inference_mode(), self._exact(x.device):
            return self.__model(x).float().softmax(1)

    def shares_model(self, other: ScoreOracle) -> bool:
        return self.__model is other.__model and (self.precision, self.cuda_graph) == (other.precision,
                                                                                         other.cuda_graph)

    def _scores(self, xs, deltas, targets, fast: bool):
        """Objective and batch ASR of each (x_i + delta_i) segment, from one forward pass of their
        concatenation: two 0-d-per-segment device tensors, no host sync. Not a query (the caller charges)."""
        def run(ds, graphed=False):
            z = torch.cat([(x + d).clamp(0, 1) for x, d in zip(xs, ds)]) if len(xs) > 1 else (xs[0] + ds[0]).clamp(0, 1)
            if fast:
                z = z.contiguous(memory_format=torch.channels_last)
            with (self._fast if fast else self._exact)(z.device):
                cache = torch.is_autocast_cache_enabled()
                # a graph must not read autocast's cached weight casts: they are freed when autocast exits
                torch.set_autocast_cache_enabled(cache and not graphed)
                try:
                    probs = self.__model(z).float().softmax(1)
                finally:
                    torch.set_autocast_cache_enabled(cache)
            losses, asrs, a = [], [], 0
            for x, t in zip(xs, targets):
                p = probs[a : a + len(x)]
                a += len(x)
                losses.append(margin_loss(p, t))
                asrs.append((p.argmax(1) == t).float().mean())
            return torch.stack(losses), torch.stack(asrs)

        with torch.inference_mode():
            if not (self.cuda_graph and xs[0].device.type == "cuda"):
                return run(deltas)
            key = (fast, tuple((x.data_ptr(), tuple(x.shape)) for x in xs), tuple(targets))
            if key not in self._graphs:
                self._graphs[key] = (*self._capture(run, deltas, xs[0].device), xs)  # xs: kept alive for the graph
            graph, static_d, out, _ = self._graphs[key]
            for s, d in zip(static_d, deltas):
                s.copy_(d)
            graph.replay()
            return out[0].clone(), out[1].clone()

    def _capture(self, run, deltas, device):
        """Captures ``run`` on static delta buffers (warm-up on a side stream first, as torch.cuda.graph asks;
        autocast's weight cache off, so the graph recasts the weights itself on every replay)."""
        static_d = [d.clone() for d in deltas]
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(3):
                run(static_d, graphed=True)
        torch.cuda.current_stream(device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = run(static_d, graphed=True)
        return graph, static_d, out


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


def draw_windows(shape, p_init: float, budget: int, generator: torch.Generator):
    """All of a search's random windows, drawn up front in the order the iterations use them.

    Per iteration: the top-left corner (i0, j0) of an s x s window and one sign per channel, from the
    generator in the same order as an iteration-by-iteration search. Square Attack redraws the signs until
    the window changes; that loop depends on the current delta (a device value), so instead one
    ``flip`` per iteration is drawn after all iterations: a uniformly random non-empty set of channels
    whose sign is flipped when the drawn signs equal the window's content. This gives the same
    distribution (uniform over the 2^C - 1 sign vectors other than the current one) with a fixed number
    of draws. Returns ([(i0, j0, s)], signs (n, C, 1, 1), flips (n, C, 1, 1)), signs and flips +-1."""
    c, h, w = shape
    n = max(budget - 1, 0)
    windows, signs = [], []
    for it in range(n):
        p = p_schedule(p_init, it, budget)
        s = min(max(int(round(math.sqrt(p * h * w))), 1), min(h, w) - 1)
        i0 = int(torch.randint(0, h - s + 1, (1,), generator=generator))
        j0 = int(torch.randint(0, w - s + 1, (1,), generator=generator))
        windows.append((i0, j0, s))
        signs.append(torch.randint(0, 2, (c, 1, 1), generator=generator).float() * 2 - 1)
    code = torch.randint(1, 2**c, (n,), generator=generator)
    bits = (code[:, None] >> torch.arange(c)) & 1
    flips = (1 - 2 * bits).float().view(n, c, 1, 1)
    signs = torch.stack(signs) if signs else torch.zeros(0, c, 1, 1)
    return windows, signs, flips


class _Search:
    """The state of one search inside :func:`square_search_joint` (all tensors on the batch's device)."""

    def __init__(self, oracle, x, target, *, norm, eps, budget, p_init, early_stop, seed, snapshots, calibration,
                 min_agreement):
        self.oracle, self.x, self.target, self.budget, self.early_stop = oracle, x, int(target), budget, early_stop
        shape = tuple(x.shape[1:])
        g = torch.Generator().manual_seed(seed)
        self.mag = entry_magnitude(shape, norm, eps)
        dev = x.device
        self.delta = stripes(shape, self.mag, g).to(dev)
        if eps == 0:
            self.delta.zero_()
        self.windows, signs, flips = draw_windows(shape, p_init, budget, g)
        self.signs, self.flips = (signs * self.mag).to(dev), flips.to(dev)
        self.want = sorted({int(q) for q in snapshots})
        self.snaps: dict[int, torch.Tensor] = {}
        self.asr_buf = torch.zeros(max(budget, 0), device=dev)
        self.loss_buf = torch.zeros(max(budget, 0), device=dev)
        self.q = 0  # queries this search has spent (= oracle charges made by it)
        self.checked = 0  # queries whose ASR the host has already tested against early_stop
        self.stop = None  # the query at which the batch ASR first exceeded early_stop
        self.hist = None  # the kept delta after each query of the current unchecked block (for a roll-back)
        fast = oracle.precision == "fast"
        self.mode = ("calib" if calibration > 0 else "fast") if fast else "fp32"
        self.calibration = min(int(calibration), budget) if fast else 0
        self.min_agreement = min_agreement
        self.disagree = torch.zeros((), dtype=torch.long, device=dev)

    @property
    def active(self) -> bool:
        return self.stop is None and self.q < self.budget

    def candidate(self) -> torch.Tensor:
        if self.q == 0:
            return self.delta  # the first query evaluates the initial delta
        i0, j0, s = self.windows[self.q - 1]
        window = self.delta[:, i0 : i0 + s, j0 : j0 + s]
        new = self.signs[self.q - 1]
        if self.mag > 0:  # the drawn signs equal the window's content: flip a random non-empty channel set
            new = torch.where((window == new).all(), new * self.flips[self.q - 1], new)
        cand = self.delta.clone()
        cand[:, i0 : i0 + s, j0 : j0 + s] = new
        return cand

    def update(self, cand, scores: dict) -> None:
        """Accepts ``cand`` if its objective is lower (on the device), records the query's curve point."""
        exact = scores.get("fp32")
        fast = scores.get("fast")
        first = self.q == 0
        if self.mode == "calib":
            (closs, casr), (floss, fasr) = exact, fast
            if first:
                self.loss_fast, self.asr_fast = floss, fasr
            else:
                accept = closs < self.loss
                self.disagree += (accept != (floss < self.loss_fast)).long()
                self.loss_fast = torch.where(accept, floss, self.loss_fast)
                self.asr_fast = torch.where(accept, fasr, self.asr_fast)
        else:
            closs, casr = exact if self.mode == "fp32" else fast
            accept = None if first else closs < self.loss
        if first:
            self.loss, self.asr = closs, casr
        else:
            self.delta = torch.where(accept, cand, self.delta)
            self.loss = torch.where(accept, closs, self.loss)
            self.asr = torch.where(accept, casr, self.asr)
        self.asr_buf[self.q] = self.asr
        self.loss_buf[self.q] = self.loss
        self.q += 1
        if self.early_stop < 1:  # ASR can exceed early_stop: keep the block's deltas for a roll-back
            self.hist.append(self.delta)
        while self.want and self.q >= self.want[0]:
            self.snaps[self.want.pop(0)] = self.delta.clone()

    def check(self) -> None:
        """Host sync: ends calibration, and stops (rolling back to the crossing query) past early_stop."""
        if self.mode == "calib" and self.q >= self.calibration:
            decisions = self.calibration - 1  # the first query has no decision
            self.agreed = decisions - int(self.disagree)
            self.mode = "fast" if self.agreed >= self.min_agreement * decisions else "fp32"
            if self.mode == "fast":  # from here on the kept delta's objective and ASR are the fast ones
                self.loss, self.asr = self.loss_fast, self.asr_fast
        if self.early_stop < 1 and self.q > self.checked:
            block = self.asr_buf[self.checked : self.q].tolist()
            over = [k for k, a in enumerate(block) if a > self.early_stop]
            if over:
                self.stop = self.checked + over[0] + 1
                self.delta = self.hist[over[0]]
                self.asr_buf, self.loss_buf = self.asr_buf[: self.stop], self.loss_buf[: self.stop]
        self.checked = self.q
        self.hist = []

    def result(self) -> dict:
        n = self.stop or self.q
        asrs, losses = self.asr_buf[:n].tolist(), self.loss_buf[:n].tolist()
        for q in list(self.snaps):
            if q > n:  # taken after the stop (speculatively): the attacker holds the final delta then
                self.snaps[q] = self.delta.clone()
        for q in self.want:  # never reached: the final delta is what the attacker would hold then
            self.snaps[q] = self.delta.clone()
        precision = {"mode": self.mode if self.mode != "calib" else "fp32"}
        if self.calibration:
            precision.update(calibration=self.calibration, agreed=getattr(self, "agreed", None))
        return {"delta": self.delta, "queries": n, "curve": list(zip(range(1, n + 1), asrs, losses)),
                "snapshots": self.snaps, "stopped_early": self.stop is not None, "precision": precision}


def square_search_joint(oracles, xs, targets, *, norm="linf", eps=0.05, budget=10000, p_init=0.05, early_stop=0.99,
                        seed=0, snapshots=(), calibration=0, min_agreement=1.0, check_every=None,
                        desc="QRA") -> list[dict]:
    """Several universal Square-Attack searches against one model, sharing each forward pass.

    Search i optimises its own delta on batch ``xs[i]`` towards ``targets[i]``, with its own generator
    (seeded ``seed``), accept decisions, early stop and query count (``oracles[i]``, which must all wrap the
    same model): a forward pass of the concatenated candidates is one query for each search in it. Each
    search's result is the one :func:`square_search` gives it alone (the per-image scores do not depend on
    the batch; on some kernels they differ in the last bits). ``calibration`` > 0 with a fast-precision
    oracle: the first ``calibration`` queries run in fp32 and in the fast precision, decisions from fp32;
    the search continues in the fast precision only if at least the share ``min_agreement`` of their
    accept/reject decisions agreed (1.0: every one), else in fp32.
    ``check_every``: queries between host syncs (default 1 on CPU, 32 on CUDA); results do not depend on it."""
    if not len(oracles) == len(xs) == len(targets) or not oracles:
        raise ValueError("one oracle, batch and target per search")
    if not all(o.shares_model(oracles[0]) for o in oracles):
        raise ValueError("joint searches must query the same model with the same oracle settings")
    dev = xs[0].device
    check_every = check_every or (32 if dev.type == "cuda" else 1)
    searches = [_Search(o, x, t, norm=norm, eps=eps, budget=budget, p_init=p_init, early_stop=early_stop,
                        seed=seed, snapshots=snapshots, calibration=calibration, min_agreement=min_agreement)
                for o, x, t in zip(oracles, xs, targets)]
    for s in searches:
        s.check()  # opens the first block
    lead = oracles[0]
    bar = tqdm(total=budget, desc=desc, disable=None, mininterval=30)
    hb = Heartbeat(desc, total=budget, unit="query")
    # the kept deltas' batch ASR and loss, one per search, read back only when a heartbeat line is written
    hb.fields.update(asr=lambda: " ".join(f"{float(s.asr):.3f}" for s in searches),
                     loss=lambda: " ".join(f"{float(s.loss):.4g}" for s in searches),
                     active=lambda: sum(s.active for s in searches))
    step = 0
    while any(s.active for s in searches):
        live = [s for s in searches if s.active]
        cands = [s.candidate() for s in live]
        for s in live:
            s.oracle.charge()
        scores = [{} for _ in live]
        for mode in ("fp32", "fast"):
            part = [k for k, s in enumerate(live) if s.mode in (mode, "calib")]
            if part:
                losses, asrs = lead._scores([live[k].x for k in part], [cands[k] for k in part],
                                            [live[k].target for k in part], fast=mode == "fast")
                for j, k in enumerate(part):
                    scores[k][mode] = (losses[j], asrs[j])
        for s, cand, sc in zip(live, cands, scores):
            s.update(cand, sc)
            if s.q - s.checked >= check_every or s.q == s.budget or (s.mode == "calib" and s.q >= s.calibration):
                s.check()
        step += 1
        bar.update(1)
        hb.update(1)
    bar.close()
    hb.close()
    return [s.result() for s in searches]


def square_search(oracle: ScoreOracle, x: torch.Tensor, target: int, *, norm="linf", eps=0.05, budget=10000,
                  p_init=0.05, early_stop=0.99, seed=0, snapshots=(), calibration=0, min_agreement=1.0,
                  check_every=None, desc="QRA") -> dict:
    """Universal Square-Attack search on the float batch ``x`` (already triggered for QRA).

    Returns delta, queries spent, the per-query curve (queries, batch ASR, loss of the kept delta),
    ``snapshots`` (the kept delta after each requested number of queries) and the precision it ran in."""
    return square_search_joint([oracle], [x], [target], norm=norm, eps=eps, budget=budget, p_init=p_init,
                               early_stop=early_stop, seed=seed, snapshots=snapshots, calibration=calibration,
                               min_agreement=min_agreement, check_every=check_every, desc=desc)[0]


def queries_to_reach(curve, level: float) -> int | None:
    """The first query count at which the batch ASR reached ``level`` (None if never)."""
    for q, asr, _ in curve:
        if asr >= level:
            return q
    return None


def run_query_attack(model, train, test, attack, cfg: dict, seed: int, *, fast=None) -> tuple[dict, dict]:
    """QRA and the query-based gUAA against one model; test ASR at the ``checkpoints`` query counts.

    With ``joint`` both searches share each forward pass (one query for each); otherwise they run one
    after the other. ``fast`` overrides the fast-precision context (tests)."""
    target = attack.target
    idx = attack_images(train, target, cfg["batch_size"], seed)
    x_clean = to_float(train.x[idx.to(train.x.device)])
    tidx = poisoned_test_index(test.y, target).to(test.x.device)
    x_test = test.x[tidx]
    checkpoints = sorted(int(q) for q in cfg["checkpoints"])
    common = dict(norm=cfg["norm"], eps=cfg["eps"], budget=cfg["budget"], p_init=cfg["p_init"],
                  early_stop=cfg["early_stop"], seed=seed, snapshots=checkpoints, calibration=cfg["calibration"],
                  min_agreement=cfg["min_agreement"])
    out = {"budget": {"norm": cfg["norm"], "eps": cfg["eps"], "queries": cfg["budget"]},
           "batch_size": len(idx)}
    names = ("reactivated", "guaa")
    views = {"reactivated": (attack.apply(x_clean), attack.apply), "guaa": (x_clean, None)}
    oracles = [ScoreOracle(model, budget=cfg["budget"], precision=cfg["precision"], fast=fast,
                           cuda_graph=cfg["cuda_graph"]) for _ in names]
    if cfg["joint"]:
        results = square_search_joint(oracles, [views[n][0] for n in names], [target] * len(names),
                                      desc="QRA+gUAA", **common)
    else:
        results = [square_search(o, views[n][0], target, desc=f"QRA-{n}", **common) for o, n in zip(oracles, names)]
    deltas = {}
    for name, res in zip(names, results):
        transform = views[name][1]

        def with_delta(d, transform=transform):
            return lambda x: ((transform(x) if transform else x) + d).clamp(0, 1)

        out[name] = {
            "queries": res["queries"],
            "stopped_early": res["stopped_early"],
            "precision": res["precision"],
            "asr": attack_success_rate(predict(model, x_test, with_delta(res["delta"])), target),
            "asr_at": {str(q): attack_success_rate(predict(model, x_test, with_delta(res["snapshots"][q])), target)
                       for q in checkpoints},
            "curve": [[q, round(a, 6), round(loss, 6)] for q, a, loss in res["curve"]],
            "linf": float(res["delta"].abs().max()), "l2": float(res["delta"].norm()),
        }
        deltas[f"delta_{name}"] = res["delta"].contiguous()
    return out, deltas
