"""The attack interface (docs/methods.md sections 2 and 4).

An attack has two faces:

* ``apply(x)`` -- the test-time trigger: a batch of [0, 1] float images -> triggered images.
  Every later stage (metrics, defenses, BEC, re-activation) uses only this.
* ``poison_batch(x, y, is_poison, generator)`` -- what happens to a training batch, split into
  ``draw_batch`` (the batch's randomness and poison positions, drawn on the CPU ahead of the batch) and
  ``poison_drawn`` (tensor ops on the device). Data-poisoning attacks fix a poison index once (``select``)
  and stamp the trigger on those samples; training-controlled attacks (WaNet, Input-Aware) override the
  two to poison a share of every batch.

Its state (trigger pattern, poison index, anything learned) is a flat dict of tensors saved to
safetensors by the ``trigger`` stage, so later stages rebuild exactly the same attack. Resources that
take real work (LF's pattern against a clean model, SSBA's encoder, TrojanNN's trigger, Input-Aware's
mask network) come from their own stage (``resource_stage``, ``build_resources``); an attack that keeps
learning while the victim trains (Input-Aware's generator, ``learns_in_training``) is saved again by
the training stage, and that file is the test-time trigger of every later stage.
"""

from __future__ import annotations

import torch

from dormant.errors import ConfigError


class Attack:
    """Base class. Subclasses set ``clean_label`` and implement ``apply`` (and ``init_resources`` if any)."""

    clean_label: bool = False
    #: its resources come from a separate, heavier stage (``build_resources``), not ``init_resources``
    resource_stage: bool = False
    #: that stage optimises against a clean model of the dataset
    needs_clean_model: bool = False
    #: the attack trains parameters jointly with the victim (``trainable_parameters``, ``training_loss``)
    learns_in_training: bool = False
    #: keys of the config that every attack has (``import``: its backdoored model comes from a file, the
    #: trigger is still this entry's; docs/operations.md "Models trained elsewhere")
    common_keys = ("type", "ratio", "target", "import")
    #: every other key of the attack's params.yaml entry with its default: declared here once; the JSON schema
    #: allows exactly these keys (a test checks it) and a missing key takes this value
    defaults: dict = {}

    def __init__(self, cfg: dict, image_shape: tuple[int, int, int], num_classes: int):
        unknown = sorted(set(cfg) - set(self.defaults) - set(self.common_keys) - {"name"})
        if unknown:
            raise ConfigError(f"attack {cfg.get('type')!r}: unknown key(s) {', '.join(unknown)}; "
                              f"known: {', '.join(sorted([*self.defaults, *self.common_keys[1:]]))}")
        self.cfg = dict(cfg)  # as given: saved with the trigger, so later stages rebuild exactly this attack
        self.params = {**self.defaults, **{k: v for k, v in cfg.items() if k not in self.common_keys}}
        self.image_shape = tuple(image_shape)
        self.num_classes = num_classes
        self.target = int(cfg["target"])
        self.ratio = float(cfg["ratio"])
        if not 0 <= self.target < num_classes:
            raise ConfigError(f"attacks.{cfg.get('name', cfg['type'])}.target: {self.target} is not a class "
                              f"of this dataset (0..{num_classes - 1})")
        self.poison_index = torch.zeros(0, dtype=torch.int64)
        self.resources: dict[str, torch.Tensor] = {}

    # ---- state ------------------------------------------------------------------------
    def init_resources(self, train_x: torch.Tensor, generator: torch.Generator) -> None:
        """Creates cheap trigger resources (a seeded pattern, a warping grid). Default: none."""

    def build_resources(self, train, generator: torch.Generator, *, clean_model=None, device="cpu") -> dict:
        """The resource stage: fills ``self.resources`` from the training set (and a clean model);
        returns a dict of figures for the sidecar."""
        raise NotImplementedError(f"{type(self).__name__} has no resource stage")

    def set_resources(self, resources: dict[str, torch.Tensor]) -> None:
        self.resources = dict(resources)

    # ---- joint training (training-controlled attacks that learn) -------------------------
    def trainable_parameters(self) -> list[torch.Tensor]:
        return []

    def make_optimizer(self) -> torch.optim.Optimizer | None:
        """The optimiser of what the attack learns during training (None: nothing)."""
        return None

    def train_mode(self, on: bool) -> None:
        """Switches learning on (gradients through the trigger) or off."""

    def training_loss(self) -> torch.Tensor | None:
        """An extra loss term from the last ``poison_batch`` (e.g. Input-Aware's diversity loss)."""
        return None

    def learner(self) -> AttackLearner | None:
        """What the training loop drives when the attack learns jointly with the victim (None: it does not)."""
        return AttackLearner(self) if self.learns_in_training else None

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"poison_index": self.poison_index, **{f"res.{k}": v for k, v in self.resources.items()}}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.poison_index = sd["poison_index"].long()
        self.resources = {k[4:]: v for k, v in sd.items() if k.startswith("res.")}

    def to(self, device) -> Attack:
        self.resources = {k: v.to(device) for k, v in self.resources.items()}
        return self

    # ---- poisoning --------------------------------------------------------------------
    def num_poison(self, n_candidates: int, n_train: int) -> int:
        """round(ratio * N) of the whole training set (docs/methods.md section 2), capped by the candidates."""
        k = int(round(self.ratio * n_train))
        return min(k, n_candidates)

    def select(self, train_y: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Poison index: dirty-label attacks draw uniformly from all images, clean-label from the target class."""
        y = train_y.cpu()
        cand = torch.nonzero(y == self.target).flatten() if self.clean_label else torch.arange(len(y))
        k = self.num_poison(len(cand), len(y))
        pick = torch.randperm(len(cand), generator=generator)[:k]
        self.poison_index = cand[pick].sort().values
        return self.poison_index

    def poison_mask(self, n_train: int, device=None) -> torch.Tensor:
        m = torch.zeros(n_train, dtype=torch.bool, device=device)
        m[self.poison_index.to(m.device)] = True
        return m

    def draw_batch(self, is_poison: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Everything poisoning one training batch takes from the poison flags and the generator, computed on
        the CPU before the batch exists (the training loop draws a whole epoch ahead, in batch order, so the
        generator stream is the one a per-batch draw would use). ``is_poison``: the batch's flags (CPU bool).
        Data-poisoning attacks draw nothing; they need only the positions of their samples in the batch."""
        return {"pos": torch.nonzero(is_poison).flatten()}

    def poison_drawn(self, x: torch.Tensor, y: torch.Tensor, drawn: dict[str, torch.Tensor]):
        """Poisons a float batch with what :meth:`draw_batch` drew (moved to the batch's device): the trigger on
        the samples at ``pos``, their labels -> target (dirty-label). Integer indexing whose size the host
        already knows, so no host synchronisation."""
        pos = drawn["pos"]
        if len(pos) == 0:
            return x, y
        x = x.clone()
        x[pos] = self.apply(x[pos])
        if not self.clean_label:
            y = y.index_fill(0, pos, self.target)
        return x, y

    def poison_batch(self, x: torch.Tensor, y: torch.Tensor, is_poison: torch.Tensor, generator: torch.Generator):
        """Training-time poisoning of a float batch in one call (:meth:`draw_batch`, then :meth:`poison_drawn`)."""
        drawn = self.draw_batch(is_poison.cpu(), generator)
        return self.poison_drawn(x, y, {k: v.to(x.device) for k, v in drawn.items()})

    @torch.no_grad()
    def poisoned_trainset(self, train, batch_size: int = 1000):
        """The poisoned training set as the attacker releases it (for defenses without clean data, e.g.
        PBE): uint8 images with the trigger applied on the poison index (rounded to 8 bits like any saved
        image), dirty labels set to the target. Training-controlled attacks override this."""
        from dormant.data.augment import to_float
        from dormant.data.imageset import ImageSet

        x, y = train.x.clone(), train.y.clone()
        idx = self.poison_index.to(x.device)
        for i in range(0, len(idx), batch_size):
            b = idx[i : i + batch_size]
            x[b] = (self.apply(to_float(x[b])).clamp(0, 1) * 255).round().to(torch.uint8)
        if not self.clean_label:
            y[idx] = self.target
        return ImageSet(x, y, train.classes)

    # ---- test time --------------------------------------------------------------------
    def apply(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cfg})"


def scaled(pixels_at_32: int, size: int) -> int:
    """Scales a trigger size given for 32x32 images to another image size (at least 1 pixel)."""
    return max(1, int(round(pixels_at_32 * size / 32)))


def patch_side(attack: Attack, key: str = "patch_size") -> int:
    """The side in pixels of a square trigger given at 32x32, checked to leave part of the image untouched."""
    _, h, w = attack.image_shape
    side = scaled(int(attack.params[key]), min(h, w))
    if side >= min(h, w):
        raise ConfigError(f"attacks.{attack.cfg.get('name', attack.cfg.get('type'))}.{key}: {attack.params[key]} "
                          f"(at 32x32) covers the whole {h}x{w} image; it must be smaller than the image")
    return side


class AttackLearner:
    """An attack that learns while the victim trains, seen by the training loop as a co-trained component:
    it adds its own loss term, takes its own optimiser step after each step of the model, and saves and
    restores what it has learned (and its optimiser state) with the loop's resume checkpoint."""

    def __init__(self, attack: Attack):
        self.attack = attack
        attack.train_mode(True)
        self.opt = attack.make_optimizer()

    def digest_tensors(self) -> list[torch.Tensor]:
        """What a resume checkpoint must match: the attack's starting state."""
        return list(self.attack.state_dict().values())

    def extra_loss(self) -> torch.Tensor | None:
        return self.attack.training_loss()

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    def step(self, scaler=None) -> None:
        """The attack's optimiser step; through the training loop's loss scaler when it has one (fp16)."""
        if scaler is not None:
            scaler.step(self.opt)
        else:
            self.opt.step()

    def state_tensors(self) -> dict[str, torch.Tensor]:
        out = {f"attack.{k}": v for k, v in self.attack.state_dict().items()}
        for i, st in self.opt.state_dict()["state"].items():
            out.update({f"attack_opt.{i}.{k}": torch.as_tensor(v) for k, v in st.items()})
        return out

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.attack.load_state_dict({k[7:]: v for k, v in tensors.items() if k.startswith("attack.")})
        self.attack.train_mode(True)
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("attack_opt."):
                _, i, name = k.split(".", 2)
                state.setdefault(int(i), {})[name] = v
        self.opt.load_state_dict({"state": state, "param_groups": self.opt.state_dict()["param_groups"]})

    def close(self) -> None:
        """Learning ends: the attack freezes what it learned into its saved state."""
        self.attack.train_mode(False)
