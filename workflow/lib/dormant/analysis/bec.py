"""Backdoor Existence Coefficient (docs/methods.md section 6; Zhu, Liang & Wu, NeurIPS 2024, section 3).

1. Layers: the model's ``analysis_layers()`` (for PreAct-ResNet18 the 16 3x3 convs inside the
   residual stages); the feature is that conv's output.
2. Trigger-activated change on the backdoored model f_A:
   TAC_l[k] = mean_i || a_lk(x~_i) - a_lk(x_i) ||_2 over the same test images with / without trigger;
   the top int(q * C) channels per layer (at least 1; as in the reference code) are the backdoor-related
   ones (q = 5%, 10%, 20%). The reference ranks on 2,200 poisoned test images (``tac_images``).
3. On n = 500 of those poisoned test images, per layer, linear CKA between f_A's and model m's kept channels.
4. S(m) = mean over layers; BEC(m) = (S(m) - S(f_C)) / (1 - S(f_C)), so BEC(f_C) = 0 and BEC(f_A) = 1.

The reference code instead min-max normalises S over the clean model and the defended models, which
with the clean model as the minimum is BEC / max BEC and forces the most similar defense to exactly 1;
that variant is reported only as an extra column (:func:`minmax_bec`), the headline value is the
formula above.
"""

from __future__ import annotations

import math

import torch

from dormant.analysis.cka import cka_from_grams, gram
from dormant.analysis.metrics import poisoned_test_index
from dormant.data.augment import to_float
from dormant.errors import ConfigError
from dormant.nets.probe import capture
from dormant.runtime import exact

ROUNDING = ("floor", "round")
BEC_DEFAULTS = {"tac_images": 2200, "channel_rounding": "floor"}  # the reference code's choices


def n_keep(channels: int, fraction: float, rounding: str = "floor") -> int:
    """Channels kept for a fraction: int(fraction * C) as in the reference code (``floor``) or
    round(fraction * C) (``round``), at least 1 either way."""
    if rounding == "floor":
        # the small tolerance keeps products such as 0.1 * 70 = 7.000000000000001 or 0.29 * 100 = 28.999999999999996
        # on the integer the decimal product names
        return max(1, int(math.floor(fraction * channels + 1e-9)))
    if rounding == "round":
        return max(1, int(round(fraction * channels)))
    raise ConfigError(f"bec.channel_rounding: {rounding!r} is not one of {', '.join(ROUNDING)}")


def analysis_images(test, attack, n: int, seed: int, n_tac: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (sorted) of the poisoned test images (non-target class) for TAC and for CKA, drawn from ``seed``.

    One seeded permutation of the poisoned test set: TAC ranks on its first ``n_tac`` images (default ``n``),
    CKA compares on its first ``n``, so the CKA images lie inside the TAC images whenever n <= n_tac. Both
    counts are capped at the number of poisoned test images."""
    idx = poisoned_test_index(test.y.cpu(), attack.target)
    g = torch.Generator().manual_seed(seed)
    perm = idx[torch.randperm(len(idx), generator=g)]
    n_tac = n if n_tac is None else n_tac
    return perm[:n_tac].sort().values, perm[:n].sort().values


@torch.no_grad()
def _activations(model, layers, x_float_batches, device):
    """Yields {layer: activation} for each batch of [0, 1] images, in float32 (TF32 off) even on CUDA:
    TAC differences and CKA lose their ranking precision in bf16 or TF32."""
    model.eval()
    with capture(model, layers) as store:
        for xb in x_float_batches:
            with exact(device):
                model(xb.to(device))
            yield dict(store)


def _batches(x_uint8, transform, batch_size):
    for i in range(0, len(x_uint8), batch_size):
        xb = to_float(x_uint8[i : i + batch_size])
        yield transform(xb).clamp(0, 1) if transform is not None else xb


def trigger_activated_change(model, layers, x_uint8, attack, batch_size=250, device="cpu") -> dict[str, torch.Tensor]:
    """TAC per layer and channel: mean over images of the L2 norm (over space) of a(x~) - a(x)."""
    tot: dict[str, torch.Tensor] = {}
    clean = _activations(model, layers, _batches(x_uint8, None, batch_size), device)
    trig = _activations(model, layers, _batches(x_uint8, attack.apply, batch_size), device)
    for a_c, a_t in zip(clean, trig):
        for name in layers:
            d = (a_t[name] - a_c[name]).flatten(2).norm(dim=2).sum(0).double().cpu()
            tot[name] = tot.get(name, 0) + d
    return {k: v / len(x_uint8) for k, v in tot.items()}


def ranked_channels(tac: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Channels of each layer sorted by decreasing TAC (ties broken by index, so the order is stable)."""
    return {k: torch.sort(v, descending=True, stable=True).indices for k, v in tac.items()}


@torch.no_grad()
def layer_grams(model, layers, x_uint8, attack, ranking, fractions, batch_size=250, device="cpu", rounding="floor"):
    """Gram matrices {fraction: {layer: K}} of the kept channels of ``model`` on the triggered images."""
    feats: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    top = max(fractions)
    keep_max = {name: ranking[name][: n_keep(len(ranking[name]), top, rounding)] for name in layers}
    for acts in _activations(model, layers, _batches(x_uint8, attack.apply, batch_size), device):
        for name in layers:
            feats[name].append(acts[name][:, keep_max[name].to(acts[name].device)].cpu())
    out = {}
    for q in fractions:
        out[q] = {}
        for name in layers:
            k = n_keep(len(ranking[name]), q, rounding)
            x = torch.cat(feats[name])[:, :k]  # ranking is sorted, so the top-q prefix is kept
            out[q][name] = gram(x)
    return out


def similarity(grams_a, grams_m) -> dict:
    """Per fraction: layer-wise CKA between two models' kept-channel features and their mean S."""
    res = {}
    for q, per_layer in grams_a.items():
        layer_cka = {name: cka_from_grams(per_layer[name], grams_m[q][name]) for name in per_layer}
        res[q] = {"layers": layer_cka, "S": sum(layer_cka.values()) / len(layer_cka)}
    return res


def bec_value(s_model: float, s_clean: float) -> float:
    """BEC = (S(m) - S(f_C)) / (1 - S(f_C)); NaN when the clean model is already identical in this sense."""
    if math.isclose(s_clean, 1.0):
        return float("nan")
    return (s_model - s_clean) / (1.0 - s_clean)


def minmax_bec(s_values: dict[str, float]) -> dict[str, float]:
    """The reference code's variant: min-max normalise S over the given models, which the report passes as
    the clean model plus an attack's defended models (reported as a column only)."""
    lo, hi = min(s_values.values()), max(s_values.values())
    return {k: (v - lo) / (hi - lo) if hi > lo else float("nan") for k, v in s_values.items()}


def compute_bec(backdoored, clean_model, models: dict, test, attack, *, n_images=500, fractions=(0.05, 0.1, 0.2),
                seed=0, device="cpu", tac_images: int | None = None, channel_rounding: str = "floor") -> dict:
    """BEC of each model in ``models`` (name -> model) relative to f_A = ``backdoored`` and f_C = ``clean_model``.
    TAC ranks channels on ``tac_images`` poisoned test images (default: the same ``n_images`` CKA uses)."""
    n_keep(1, 0.5, channel_rounding)  # an unknown rounding fails here, before any forward pass
    layers = backdoored.analysis_layers()
    idx_tac, idx = analysis_images(test, attack, n_images, seed, tac_images)
    x = test.x[idx.to(test.x.device)]
    tac = trigger_activated_change(backdoored, layers, test.x[idx_tac.to(test.x.device)], attack, device=device)
    ranking = ranked_channels(tac)
    fr = sorted(fractions)

    def grams(m):
        return layer_grams(m, layers, x, attack, ranking, fr, device=device, rounding=channel_rounding)

    g_a = grams(backdoored)
    s_clean = similarity(g_a, grams(clean_model))
    out = {
        "layers": layers,
        "n_images": len(idx),
        "tac_images": len(idx_tac),
        "channel_rounding": channel_rounding,
        "kept_channels": {str(q): {name: n_keep(len(ranking[name]), q, channel_rounding) for name in layers}
                          for q in fr},
        "fractions": fr,
        "tac": {k: v.tolist() for k, v in tac.items()},
        "clean": _summarise(s_clean, s_clean),
        "models": {},
    }
    for name, m in models.items():
        s_m = similarity(g_a, grams(m))
        out["models"][name] = _summarise(s_m, s_clean)
    return out


def _summarise(s_m, s_clean) -> dict:
    return {
        str(q): {"S": v["S"], "S_clean": s_clean[q]["S"], "bec": bec_value(v["S"], s_clean[q]["S"]),
                 "layer_cka": v["layers"], "layer_cka_clean": s_clean[q]["layers"]}
        for q, v in s_m.items()
    }
