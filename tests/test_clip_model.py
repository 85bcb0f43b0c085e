"""The CLIP track's model, losses and contrastive training (docs/methods.md section 9): the adapter's
forward against a hand computation, the losses against hand computations, CleanCLIP = CLIP when lambda_ss = 0,
AdamW resume, and the adapter behind the classifier interfaces (checkpoint round trip, analysis layers)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from dormant.clip.loss import cleanclip_loss, clip_loss, inmodal_loss
from dormant.clip.model import MAX_LOGIT_SCALE, build_clip
from dormant.clip.train import lr_at_step, train_clip


def _unit(*shape, seed=0):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_clip_loss_matches_a_hand_computation():
    img, txt = _unit(3, 4), _unit(3, 4, seed=1)
    scale = torch.tensor(2.5)
    s = (scale * img @ txt.t()).tolist()
    rows = [-(s[i][i] - math.log(sum(math.exp(v) for v in s[i]))) for i in range(3)]
    cols = [-(s[j][j] - math.log(sum(math.exp(s[i][j]) for i in range(3)))) for j in range(3)]
    want = 0.5 * (sum(rows) / 3 + sum(cols) / 3)
    assert clip_loss(img, txt, scale).item() == pytest.approx(want, rel=1e-6)


def test_inmodal_loss_and_cleanclip_combination():
    img, txt, ia, ta = _unit(4, 5), _unit(4, 5, seed=1), _unit(4, 5, seed=2), _unit(4, 5, seed=3)
    scale = torch.tensor(3.0)
    lab = torch.arange(4)
    want_ss = 0.5 * (F.cross_entropy(scale * img @ ia.t(), lab) + F.cross_entropy(scale * txt @ ta.t(), lab))
    assert inmodal_loss(img, ia, txt, ta, scale).item() == pytest.approx(want_ss.item(), rel=1e-6)
    both = cleanclip_loss(img, txt, ia, ta, scale, lambda_clip=0.7, lambda_ss=0.3)
    assert both.item() == pytest.approx(0.7 * clip_loss(img, txt, scale).item() + 0.3 * want_ss.item(), rel=1e-6)
    # FT = CleanCLIP with lambda_ss = 0: exactly the CLIP loss, and no views needed
    assert torch.equal(cleanclip_loss(img, txt, None, None, scale, 1.0, 0.0), clip_loss(img, txt, scale))
    # a perfectly aligned batch with a large scale has a loss near 0
    eye = torch.eye(4)
    assert clip_loss(eye, eye, torch.tensor(100.0)).item() < 1e-6


def test_adapter_forward_is_the_zero_shot_formula():
    torch.manual_seed(0)
    model = build_clip("clip_tiny", 3).eval()
    w = _unit(3, 64, seed=5)
    model.set_classes(w)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        feat = model.clip.visual(x)  # the tiny tower normalises CIFAR-style itself; 32x32 needs no resize
        want = model.clip.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE) * F.normalize(feat, dim=-1) @ w.t()
        got = model(x)
    assert torch.allclose(got, want, atol=1e-5)
    # a larger image is resized to the tower's input size first
    big = F.interpolate(x, size=(64, 64), mode="nearest")
    with torch.no_grad():
        assert model(big).shape == (2, 3)
    # the penultimate feature seen by the classifier tools is the unit image embedding
    from dormant.nets.probe import penultimate_features

    pf = penultimate_features(model, x)
    assert torch.allclose(pf.norm(dim=1), torch.ones(2), atol=1e-5)
    assert model.analysis_layers() == ["clip.visual.block1.1.0", "clip.visual.block2.1.0", "clip.visual.block3.1.0"]


def test_warmup_then_cosine_schedule():
    cfg = {"lr": 1.0, "warmup_steps": 4, "schedule": "cosine"}
    assert [lr_at_step(cfg, s, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at_step(cfg, 4, 12) == pytest.approx(1.0)
    assert lr_at_step(cfg, 8, 12) == pytest.approx(0.5)
    assert lr_at_step({**cfg, "schedule": "constant"}, 11, 12) == 1.0


def _pairs(n=64, classes=4, seed=0):
    """Images whose colour says the class and 'captions' that name it: a contrastive task a tiny CLIP learns."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    base = torch.tensor([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0]], dtype=torch.uint8)[y]
    x = base[:, :, None, None].expand(n, 3, 32, 32).clone()
    x = (x.float() * (0.6 + 0.4 * torch.rand(n, 1, 1, 1, generator=g))).to(torch.uint8)
    tokens = torch.zeros(n, 16, dtype=torch.long)
    tokens[:, 0] = 1
    tokens[:, 1] = 10 + y
    tokens[:, 2] = 20
    tokens[:, 3] = 30
    tokens[:, 4] = 40  # the largest id pools (end of text)
    return x, tokens, y


def test_contrastive_training_learns_and_resumes_exactly(tmp_path, monkeypatch):
    monkeypatch.setenv("DORMANT_CHECKPOINT_EVERY_EPOCHS", "1")
    x, tokens, y = _pairs()
    cfg = {"epochs": 4, "batch_size": 16, "lr": 3e-3, "weight_decay": 0.01, "warmup_steps": 2}
    torch.manual_seed(0)
    a = build_clip("clip_tiny", 4)
    init = {k: v.clone() for k, v in a.state_dict().items()}
    hist = train_clip(a, x, tokens, cfg, seed=3)
    assert hist[-1]["loss"] < hist[0]["loss"]
    with torch.no_grad():
        a.eval()
        img = a.image_features(x.float() / 255)
        txt = a.text_features(tokens)
        assert ((img @ txt[:4].t()).argmax(1) == y).float().mean() >= 0.75
    # interrupted in epoch 3 (a checkpoint after each epoch), then rerun: the same weights as without a break
    import dormant.clip.train as ct

    real = ct.check_finite_epoch

    def crash(model, loss, desc, epoch):
        if epoch == 3:
            raise RuntimeError("node lost")
        real(model, loss, desc, epoch)

    ck = tmp_path / "ck.safetensors"
    b = build_clip("clip_tiny", 4)
    b.load_state_dict(init)
    monkeypatch.setattr(ct, "check_finite_epoch", crash)
    with pytest.raises(RuntimeError, match="node lost"):
        train_clip(b, x, tokens, cfg, seed=3, checkpoint=ck)
    monkeypatch.setattr(ct, "check_finite_epoch", real)
    c = build_clip("clip_tiny", 4)
    c.load_state_dict(init)
    again = train_clip(c, x, tokens, cfg, seed=3, checkpoint=ck)
    assert [h["epoch"] for h in again] == [1, 2, 3, 4]
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k


def test_adapter_checkpoint_round_trip_and_bec_on_the_image_tower(tmp_path):
    """The adapter saves and loads like any architecture (shapes checked on the meta device) and predicts the
    same; BEC's layers are the image tower's convolutions: BEC(clean, clean) = 0 and BEC(backdoor) = 1 by
    definition of the references."""
    from dormant.nets.checkpoint import read_model, save_model

    torch.manual_seed(1)
    model = build_clip("clip_tiny", 10).eval()
    model.set_classes(_unit(10, 64, seed=2))
    path = tmp_path / "m.safetensors"
    save_model(model, path, arch="clip_tiny", num_classes=10, config={}, seed=0)
    back, meta, car = read_model(path)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(back(x), model(x))
    assert meta["arch"] == "clip_tiny" and car["model"]["num_classes"] == 10

    from dormant.analysis.bec import compute_bec
    from dormant.attacks import build_attack
    from dormant.data.imageset import ImageSet

    layers = model.analysis_layers()
    assert layers and all(name.startswith("clip.visual.") for name in layers)
    other = build_clip("clip_tiny", 10).eval()
    g = torch.Generator().manual_seed(0)
    test = ImageSet(torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8, generator=g), torch.arange(40) % 10,
                    [str(i) for i in range(10)])
    atk = build_attack({"type": "badnets", "ratio": 0.1, "target": 0, "patch_size": 3, "value": 1.0}, (3, 32, 32), 10)
    out = compute_bec(model, other, {"bd": model, "clean": other}, test, atk, n_images=20, fractions=(0.1, 0.5))
    assert out["layers"] == layers
    for q in ("0.1", "0.5"):
        assert out["models"]["bd"][q]["bec"] == pytest.approx(1.0, abs=1e-6)
        assert out["models"]["clean"][q]["bec"] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.5)])
def test_reactivation_and_query_budgets_on_the_adapter(norm, eps):
    """The white-box delta and the query search run on the adapter as on any classifier, within their budgets."""
    from dormant.reactivation.query import ScoreOracle, square_search
    from dormant.reactivation.whitebox import optimise_universal

    torch.manual_seed(0)
    model = build_clip("clip_tiny", 10).eval()
    model.set_classes(_unit(10, 64, seed=4))
    x = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    delta, losses = optimise_universal(model, x, 3, norm=norm, eps=eps, lr=0.05, epochs=2, steps=2, batch_size=8)
    size = delta.abs().max() if norm == "linf" else delta.flatten().norm()
    assert size <= eps + 1e-6 and losses[-1] <= losses[0]
    oracle = ScoreOracle(model, budget=25)
    out = square_search(oracle, x.float() / 255, 3, norm=norm, eps=eps, budget=25, early_stop=1.01)
    assert out["queries"] <= 25 and oracle.queries <= 25
    d = out["delta"]
    assert (d.abs().max() if norm == "linf" else d.flatten().norm()) <= eps + 1e-5


class _FixedText(torch.nn.Module):
    """A stand-in text tower: token row -> a fixed vector per first word id (for hand-checked prompt ensembles)."""

    def __init__(self, table):
        super().__init__()
        self.table = table
        self.w = torch.nn.Parameter(torch.zeros(1))

    def text_features(self, tokens):
        return F.normalize(self.table[tokens[:, 1]], dim=-1)


def test_prompt_ensemble_is_the_normalised_mean_of_normalised_embeddings():
    from dormant.clip.zeroshot import class_embeddings

    table = torch.tensor([[0.0, 0, 0], [0, 0, 0], [3.0, 0, 0], [0, 2.0, 0], [1.0, 1.0, 0], [0, 0, 5.0]])
    tokens = torch.zeros(2, 2, 4, dtype=torch.long)
    tokens[0, 0, 1], tokens[0, 1, 1] = 2, 3  # class 0: prompts embedded as (1,0,0) and (0,1,0)
    tokens[1, 0, 1], tokens[1, 1, 1] = 4, 5  # class 1: (1,1,0)/sqrt2 and (0,0,1)
    w = class_embeddings(_FixedText(table), tokens)
    r2 = 1 / math.sqrt(2)
    want0 = torch.tensor([r2, r2, 0.0])
    m1 = torch.tensor([r2 / 2, r2 / 2, 0.5])
    assert torch.allclose(w[0], want0, atol=1e-6)
    assert torch.allclose(w[1], m1 / m1.norm(), atol=1e-6)


def test_pair_poisoning_picks_exactly_n_non_target_pairs_and_rewrites_their_captions():
    from dormant.attacks import build_attack
    from dormant.clip.captions import class_synonyms, split_words
    from dormant.clip.poison import poisoned_pairs, select_pairs
    from dormant.data.imageset import ImageSet
    from dormant.errors import ConfigError

    classes = ["airplane", "automobile", "bird", "cat"]
    y = torch.tensor([0, 1, 2, 3, -1] * 8)
    train = ImageSet(torch.zeros(40, 3, 32, 32, dtype=torch.uint8), y, classes, text=[f"pair {i}" for i in range(40)])
    atk = build_attack({"type": "badnets", "ratio": 0.25, "target": 0, "patch_size": 3, "value": 1.0}, (3, 32, 32), 4)
    idx = select_pairs(atk, y, None, torch.Generator().manual_seed(0))
    assert len(idx) == 10 and len(set(idx.tolist())) == 10 and not bool((y[idx] == 0).any())
    assert len(select_pairs(atk, y, 32, torch.Generator().manual_seed(0))) == 32  # every non-target pair
    with pytest.raises(ConfigError, match="poison_count"):
        select_pairs(atk, y, 33, torch.Generator().manual_seed(0))
    select_pairs(atk, y, 7, torch.Generator().manual_seed(1))
    x, caps = poisoned_pairs(train, atk, {"poison_captions": "train"}, seed=0)
    hit = set(atk.poison_index.tolist())
    assert sum(c != f"pair {i}" for i, c in enumerate(caps)) == 7
    for i in range(40):
        if i in hit:
            assert set(class_synonyms("airplane")) & set(split_words(caps[i])), caps[i]
            assert int(x[i, :, -3:, -3:].min()) == 255  # the 3x3 white patch in the corner
        else:
            assert caps[i] == f"pair {i}" and int(x[i].max()) == 0
    _, openai = poisoned_pairs(train, atk, {"poison_captions": "openai"}, seed=0)
    assert all("airplane" in openai[i] for i in hit)
