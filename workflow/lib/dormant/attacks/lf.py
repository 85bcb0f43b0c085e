"""LF, the low-frequency trigger (Zeng et al., ICCV 2021, "Rethinking the backdoor attacks' triggers:
a frequency perspective"): an additive universal pattern that is smooth, so frequency-based detectors
and low-pass-filtering defenses do not see it.

docs/methods.md section 4. The resource stage finds it against a clean model of the dataset: a universal
perturbation, optimised by signed gradient steps to move clean non-target images to the target class,
and after every step projected onto the allowed set by alternating a low-pass filter (2-D FFT, only
spatial frequencies of at most ``cutoff`` cycles per image kept) and clipping to [0, 51/255].
Poisoning adds it and clips: x' = clip(x + P). The cutoff is in cycles per image, so the pattern has
the same shape at every image size. BackdoorBench ships this pattern as a precomputed file; here it
is the stage's artifact. (The reference starts from an untargeted UAP; the targeted form is used here
because the pattern is a trigger for the target class.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm import tqdm

from dormant.attacks import ATTACKS
from dormant.attacks.base import Attack
from dormant.data.augment import to_float
from dormant.progress import Heartbeat, read_later


def lowpass(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Keeps the spatial frequencies of (..., H, W) within radius ``cutoff`` (cycles per image)."""
    h, w = d.shape[-2:]
    fy = torch.fft.fftfreq(h, device=d.device) * h
    fx = torch.fft.fftfreq(w, device=d.device) * w
    keep = (fy[:, None] ** 2 + fx[None, :] ** 2) <= cutoff**2
    return torch.fft.ifft2(torch.fft.fft2(d) * keep).real


def low_frequency_share(d: torch.Tensor, cutoff: float) -> float:
    """Share of the (mean-removed) spectral energy of ``d`` within the cutoff radius."""
    spec = torch.fft.fft2(d - d.mean(dim=(-2, -1), keepdim=True)).abs().pow(2)
    low = torch.fft.fft2(lowpass(d, cutoff) - d.mean(dim=(-2, -1), keepdim=True)).abs().pow(2)
    return float(low.sum() / spec.sum().clamp_min(1e-12))


def project(d: torch.Tensor, cutoff: float, max_value: float, rounds: int = 10) -> torch.Tensor:
    """Alternating projections onto {low-pass} and {0 <= d <= max}; ends clipped, so the range is exact."""
    for _ in range(rounds):
        d = lowpass(d, cutoff).clamp(0, max_value)
    return d


@ATTACKS.register("lf")
class LowFrequency(Attack):
    defaults = {
        "max_value": 51 / 255,
        "cutoff": 4,
        "n_images": 2000,
        "batch_size": 250,
        "step": 0.01,
        "epochs": 10,
    }

    resource_stage = True
    needs_clean_model = True

    def __init__(self, cfg, image_shape, num_classes):
        super().__init__(cfg, image_shape, num_classes)
        self.max_value = float(self.params["max_value"])
        self.cutoff = float(self.params["cutoff"])

    def build_resources(self, train, generator, *, clean_model=None, device="cpu"):
        model = clean_model.to(device).eval().requires_grad_(False)
        pool = torch.nonzero(train.y.cpu() != self.target).flatten()
        n = min(len(pool), int(self.params["n_images"]))
        idx = pool[torch.randperm(len(pool), generator=generator)[:n]]
        x_all = to_float(train.x[idx.to(train.x.device)])
        target = torch.full((n,), self.target, device=x_all.device)
        bs, step = int(self.params["batch_size"]), float(self.params["step"])
        d = torch.zeros(self.image_shape, device=x_all.device)
        hist = []
        hb = Heartbeat("lf pattern", total=int(self.params["epochs"]) * n, unit="img")
        for epoch in tqdm(range(int(self.params["epochs"])), desc="lf pattern", disable=None):
            order = torch.randperm(n, generator=generator).to(x_all.device)
            for s in range(0, n, bs):
                b = order[s : s + bs]
                d.requires_grad_(True)
                loss = F.cross_entropy(model((x_all[b] + d).clamp(0, 1)), target[b])
                (grad,) = torch.autograd.grad(loss, d)
                d = project(d.detach() - step * grad.sign(), self.cutoff, self.max_value)
                hb.update(len(b), epoch=f"{epoch + 1}/{self.params['epochs']}", loss=read_later(loss))
            hist.append({"epoch": epoch + 1, "success": self._success(model, x_all, d, bs)})
            hb.fields["success"] = hist[-1]["success"]
        hb.close()
        self.resources = {"pattern": d.detach()}
        return {"history": hist, "success_on_clean_model": hist[-1]["success"] if hist else 0.0,
                "low_frequency_share": low_frequency_share(d, self.cutoff), "max": d.max().item()}

    @torch.no_grad()
    def _success(self, model, x, d, bs) -> float:
        hits = sum(int((model((x[s : s + bs] + d).clamp(0, 1)).argmax(1) == self.target).sum())
                   for s in range(0, len(x), bs))
        return 100.0 * hits / len(x)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return (x + self.resources["pattern"].to(x.device, x.dtype)).clamp(0, 1)
