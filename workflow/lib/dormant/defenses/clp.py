"""CLP: data-free channel Lipschitzness-based pruning (Zheng et al., ECCV 2022; docs/methods.md section 5).

For every conv-BN pair, the upper bound of channel k's Lipschitz constant is the spectral norm of its kernel
W_k (in_channels x kh*kw) times |gamma_k| / sigma_k of the paired BN. Channels whose bound exceeds
mean + u * std of their layer are pruned by zeroing that BN channel's weight and bias (its output is then
constant 0 before the activation). Uses no data at all.

``pairing`` says which conv each BN is scored with:
* ``module_order`` (default): every BN with the last conv registered before it, as BackdoorBench's CLP, whose
  leaderboard numbers are the anchor (:func:`dormant.nets.probe.module_order_pairs`). In pre-activation
  blocks this also scores each ``bn1`` against the previous block's output conv, which is not the conv it
  normalises (its input is a residual sum). BNs whose preceding conv has another width are not scored; the
  info lists them (``unpaired_bns``).
* ``direct``: only BNs fed directly by a conv (:func:`dormant.nets.probe.conv_bn_pairs`), the pairs for which
  the bound is what the paper derives (9 of PreAct-ResNet18's 16 BNs).
"""

from __future__ import annotations

import torch

from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense
from dormant.errors import ConfigError
from dormant.nets import probe as introspect

PAIRINGS = ("module_order", "direct")


def clp_pairs(model, pairing: str, image_shape=(3, 32, 32)) -> list[tuple[str, str]]:
    """The (conv, bn) pairs CLP scores under ``pairing`` (see the module docstring)."""
    if pairing == "module_order":
        return introspect.module_order_pairs(model)
    if pairing == "direct":
        return introspect.conv_bn_pairs(model, image_shape)
    raise ConfigError(f"defenses.<clp>.pairing: {pairing!r} is not one of {', '.join(PAIRINGS)}")


def channel_lipschitz(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """Upper bound of each output channel's Lipschitz constant through conv + BN (one value per channel)."""
    w = conv.weight.detach().float()
    scale = bn.weight.detach().float().abs() / torch.sqrt(bn.running_var.float() + bn.eps)
    kernels = w.reshape(w.shape[0], w.shape[1], -1)  # out x in x (kh*kw)
    return torch.linalg.matrix_norm(kernels, ord=2) * scale


@DEFENSES.register("clp")
class ChannelLipschitzPruning(Defense):
    defaults = {"u": 3.0, "pairing": "module_order"}

    def __init__(self, cfg: dict):
        super().__init__(cfg)
        if self.cfg["pairing"] not in PAIRINGS:
            raise ConfigError(f"defenses.<clp>.pairing: {self.cfg['pairing']!r} is not one of {', '.join(PAIRINGS)}")

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        u = float(self.cfg["u"])
        shape = tuple(clean.x.shape[1:]) if clean is not None and len(clean) else (3, 32, 32)
        pruned, total = {}, 0
        pairs = clp_pairs(model, self.cfg["pairing"], shape)
        with torch.no_grad():
            for conv_name, bn_name in pairs:
                conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
                ub = channel_lipschitz(conv, bn)
                idx = torch.nonzero(ub > ub.mean() + u * ub.std()).flatten()
                bn.weight[idx] = 0
                bn.bias[idx] = 0
                if len(idx):
                    pruned[bn_name] = idx.tolist()
                total += bn.num_features
        n = sum(len(v) for v in pruned.values())
        history = [{"epoch": 0, "pruned_channels": n, "pruned_fraction": n / max(1, total)}]
        if monitor is not None:
            history[0].update(monitor(model))
        return model, {"history": history, "changed": n > 0, "pruned": pruned, "pruned_channels": n,
                       "channels": total, "u": u, "pairing": self.cfg["pairing"], "pairs": len(pairs),
                       "unpaired_bns": introspect.unpaired_bns(model, pairs)}
