"""CLP: data-free channel Lipschitzness-based pruning (Zheng et al., ECCV 2022; docs/methods.md section 5).

For every conv-BN pair (found by :func:`dormant.nets.probe.conv_bn_pairs`), the upper bound of channel k's
Lipschitz constant is the spectral norm of its kernel W_k (in_channels x kh*kw) times |gamma_k| / sigma_k
of the BN that normalises it. Channels whose bound exceeds mean + u * std of their layer are pruned by
zeroing that BN channel's weight and bias (its output is then constant 0 before the activation). Uses no
data at all; ``u`` (default 3) is the only setting.
"""

from __future__ import annotations

import torch

from dormant.defenses import DEFENSES
from dormant.defenses.base import Defense
from dormant.nets import probe as introspect


def channel_lipschitz(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> torch.Tensor:
    """Upper bound of each output channel's Lipschitz constant through conv + BN (one value per channel)."""
    w = conv.weight.detach().float()
    scale = bn.weight.detach().float().abs() / torch.sqrt(bn.running_var.float() + bn.eps)
    kernels = w.reshape(w.shape[0], w.shape[1], -1)  # out x in x (kh*kw)
    return torch.linalg.matrix_norm(kernels, ord=2) * scale


@DEFENSES.register("clp")
class ChannelLipschitzPruning(Defense):
    defaults = {"u": 3.0}

    def run(self, model, clean, *, seed, checkpoint=None, monitor=None, audit=None):
        u = float(self.cfg["u"])
        shape = tuple(clean.x.shape[1:]) if clean is not None and len(clean) else (3, 32, 32)
        pruned, total = {}, 0
        with torch.no_grad():
            for conv_name, bn_name in introspect.conv_bn_pairs(model, shape):
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
                       "channels": total, "u": u}
