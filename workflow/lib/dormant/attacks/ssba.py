"""SSBA, the sample-specific invisible backdoor (Li et al., ICCV 2021).

docs/methods.md section 4. A StegaStamp-style encoder hides a fixed bit string (``n_bits`` = 100 in the
reference, drawn from ``bit_seed``) in every image as an image-specific residual; the decoder that
reads the bits back is what forces the residual to carry them. The resource stage trains both on the
dataset's training images with random bit strings: binary cross-entropy of the decoded bits plus
``l2_weight`` times the residual's mean square relative to eps^2, off for the first half of training
while the bits become decodable, then ramped up (StegaStamp ramps its image losses too). Poisoning
encodes the fixed string: x' = clip(x + r(x, s)), labels set to the target (dirty-label, 10%).

Deviations, named: the encoder adds a linear code of the bits to its U-Net's output (without it,
neither network learned anything in a CPU-sized run: bit accuracy stayed at 50%); the residual is
bounded by ``eps`` * tanh (L-inf, 0.05 by default) instead of StegaStamp's perceptual (LPIPS) and
critic losses, so that no pretrained perceptual network is needed; and the encoder is trained on the
victim dataset itself (the reference trains on a separate dataset). BackdoorBench only ships the
encoded images; here the encoder is the stage's artifact, so every image size and dataset works.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dormant.attacks import ATTACKS
from dormant.attacks.base import Attack
from dormant.attacks.generators import BitDecoder, EncoderDecoder, from_tensors, seeded, to_tensors
from dormant.data.augment import to_float
from dormant.progress import Heartbeat, read_later


class BitEncoder(nn.Module):
    """(image, bits) -> residual eps * tanh(code(bits) + U(image, bits)) in [-eps, eps]: a linear code of the
    bits at full resolution (what makes the bits decodable within a short CPU-sized training) shaped per
    image by the U-Net U, which sees the image and the bits (as a map at a quarter of the resolution)."""

    def __init__(self, image_shape, n_bits: int, eps: float, width: int = 16):
        super().__init__()
        c, h, w = image_shape
        self.shape, self.hw = tuple(image_shape), (h // 4, w // 4)
        self.eps = eps
        self.code = nn.Linear(n_bits, c * h * w)
        self.spread = nn.Linear(n_bits, self.hw[0] * self.hw[1])
        self.net = EncoderDecoder(c + 1, c, width)

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        b = bits * 2 - 1
        s = self.spread(b).view(-1, 1, *self.hw)
        s = F.interpolate(s, size=x.shape[-2:], mode="nearest").expand(len(x), -1, -1, -1)
        code = self.code(b).view(-1, *self.shape)
        return self.eps * torch.tanh(code + self.net(torch.cat([x, s], 1)))


@ATTACKS.register("ssba")
class SSBA(Attack):
    defaults = {
        "n_bits": 100,
        "net_seed": 0,
        "width": 16,
        "eps": 0.05,
        "bit_seed": 0,
        "lr": 0.001,
        "batch_size": 64,
        "l2_weight": 0.5,
        "epochs": 10,
    }

    resource_stage = True

    def __init__(self, cfg, image_shape, num_classes):
        super().__init__(cfg, image_shape, num_classes)
        self.n_bits = int(self.params["n_bits"])
        seed, width = int(self.params["net_seed"]), int(self.params["width"])
        self.encoder = seeded(lambda: BitEncoder(self.image_shape, self.n_bits, float(self.params["eps"]), width),
                              seed)
        self.decoder = seeded(lambda: BitDecoder(self.n_bits, self.image_shape), seed + 1)
        self.encoder.requires_grad_(False)
        self.decoder.requires_grad_(False)
        g = torch.Generator().manual_seed(int(self.params["bit_seed"]))
        self.bits = torch.randint(0, 2, (self.n_bits,), generator=g).float()

    def build_resources(self, train, generator, *, clean_model=None, device="cpu"):
        self.to(device)
        enc, dec = self.encoder.requires_grad_(True), self.decoder.requires_grad_(True)
        opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=float(self.params["lr"]))
        bs, n, l2w = int(self.params["batch_size"]), len(train), float(self.params["l2_weight"])
        hist, epochs, it = [], int(self.params["epochs"]), 0
        half = max(1, epochs * ((n + bs - 1) // bs) // 2)  # the residual penalty: 0, then ramped up to l2_weight
        hb = Heartbeat("ssba encoder", total=epochs * n, unit="img")
        for epoch in tqdm(range(epochs), desc="ssba encoder", disable=None):
            perm = torch.randperm(n, generator=generator)
            tot = torch.zeros(3)
            for s in range(0, n, bs):
                x = to_float(train.x[perm[s : s + bs].to(train.x.device)])
                bits = torch.randint(0, 2, (len(x), self.n_bits), generator=generator).float().to(x.device)
                r = enc(x, bits)
                logits = dec((x + r).clamp(0, 1))
                bce = F.binary_cross_entropy_with_logits(logits, bits)
                l2 = r.pow(2).mean() / enc.eps**2
                loss = bce + l2w * min(1.0, max(0.0, it / half - 1)) * l2
                it += 1
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                acc = ((logits > 0).float() == bits).float().mean()
                tot += torch.tensor([bce.item(), l2.item(), acc.item()]) * len(x)
                hb.update(len(x), epoch=f"{epoch + 1}/{epochs}", bce=read_later(bce), bit_acc=read_later(acc))
            tot /= n
            hist.append({"epoch": epoch + 1, "bce": tot[0].item(), "l2": tot[1].item(), "bit_acc": 100 * tot[2].item()})
        hb.close()
        enc.requires_grad_(False)
        dec.requires_grad_(False)
        self.refresh()
        with torch.no_grad():
            x = to_float(train.x[: min(n, 500)])
            xp = self.apply(x)
            fixed_acc = ((dec(xp) > 0).float() == self.bits.to(x.device)).float().mean().item()
            mse = (xp - x).pow(2).mean().item()
        return {"history": hist, "fixed_bits_accuracy": 100 * fixed_acc,
                "psnr": float(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12)))),
                "residual_linf": (xp - x).abs().max().item()}

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        bits = self.bits.to(x.device)[None].expand(len(x), -1)
        return self.encoder(x, bits)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return (x + self.residual(x)).clamp(0, 1)

    # ---- state -------------------------------------------------------------------------
    def refresh(self) -> None:
        self.resources = {**to_tensors("enc", self.encoder), **to_tensors("dec", self.decoder),
                          "bits": self.bits.clone()}

    def set_resources(self, resources):
        super().set_resources(resources)
        from_tensors("enc", self.encoder, resources)
        from_tensors("dec", self.decoder, resources)
        self.bits = resources["bits"].float()

    def load_state_dict(self, sd):
        super().load_state_dict(sd)
        self.set_resources(self.resources)

    def state_dict(self):
        self.refresh()
        return super().state_dict()

    def to(self, device):
        self.encoder.to(device)
        self.decoder.to(device)
        self.bits = self.bits.to(device)
        self.refresh()
        return self
