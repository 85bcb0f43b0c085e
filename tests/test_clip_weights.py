"""Pretrained CLIP weights (dormant.clip.weights): every accepted format loads back exactly, pickles that need
code and TorchScript without the opt-in are refused, bad tensors are named; the BEC layer lists."""

import dataclasses
import warnings
import zipfile

import pytest
import torch
from dormant.clip.weights import load_pretrained, resnet_analysis_layers, sniff_format, vit_analysis_layers
from dormant.errors import CheckpointError
from dormant.io import save_tensors

open_clip = pytest.importorskip("open_clip")

LAYERS = [1, 2, 1, 1]


def tiny_clip(seed: int = 0, layers=None) -> torch.nn.Module:
    """A 40K-parameter CLIP with open_clip's ModifiedResNet image tower (builds in milliseconds)."""
    with torch.random.fork_rng():  # seeded without changing the global generator of the other tests
        torch.manual_seed(seed)
        model = open_clip.CLIP(embed_dim=32, vision_cfg=dict(layers=layers or LAYERS, width=8, image_size=32,
                                                             head_width=8),
                               text_cfg=dict(context_length=8, vocab_size=50, width=16, heads=2, layers=1))
        with torch.no_grad():  # distinct BatchNorm statistics too, so that buffers are checked like weights
            for name, buf in model.named_buffers():
                if name.endswith(("running_mean", "running_var")):
                    buf.uniform_(0.5, 1.5)
                elif name.endswith("num_batches_tracked"):
                    buf.fill_(seed + 7)
    return model.eval()


@dataclasses.dataclass
class TrainerOptions:  # an object a careless trainer pickles next to its weights
    lr: float = 1e-5


def assert_same(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.fixture
def src():
    return tiny_clip(seed=1)


def fresh():
    return tiny_clip(seed=2)


def test_safetensors_round_trip(tmp_path, src):
    path = tmp_path / "w.safetensors"
    digest = save_tensors(src.state_dict(), path)
    dst = fresh()
    info = load_pretrained(path, dst)
    assert_same(src, dst)
    assert info == {"format": "safetensors", "n_tensors": len(src.state_dict()), "sha256": digest,
                    "wrapper": None, "stripped_prefix": False}


def test_format_is_read_from_the_bytes_not_the_name(tmp_path, src):
    path = tmp_path / "weights.bin"
    save_tensors(src.state_dict(), path)
    assert sniff_format(path) == "safetensors"
    dst = fresh()
    load_pretrained(path, dst)
    assert_same(src, dst)


def test_plain_torch_state_dict_in_float16_is_cast_to_float32(tmp_path, src):
    half = {k: (v.half() if v.is_floating_point() else v) for k, v in src.state_dict().items()}
    torch.save(half, tmp_path / "openai.pt")
    dst = fresh()
    info = load_pretrained(tmp_path / "openai.pt", dst)
    assert info["format"] == "torch" and info["wrapper"] is None
    for k, v in dst.state_dict().items():
        want = half[k].float() if half[k].is_floating_point() else half[k]
        assert v.dtype == src.state_dict()[k].dtype and torch.equal(v, want), k


def test_cleanclip_checkpoint_with_ddp_prefix(tmp_path, src):
    """CleanCLIP/BadCLIP's training checkpoint: epoch, run name, DataParallel state dict and AdamW state."""
    opt = torch.optim.AdamW(src.parameters(), lr=1e-5)
    for prm in src.parameters():
        prm.grad = torch.full_like(prm, 1e-3)
    opt.step()  # an optimizer state (step counts, moments) beside the weights, as in a real checkpoint
    ckpt = {"epoch": 5, "name": "cleanclip", "state_dict": {"module." + k: v for k, v in src.state_dict().items()},
            "optimizer": opt.state_dict()}
    torch.save(ckpt, tmp_path / "epoch_5.pt")
    dst = fresh()
    info = load_pretrained(tmp_path / "epoch_5.pt", dst)
    assert_same(src, dst)
    assert (info["format"], info["wrapper"], info["stripped_prefix"]) == ("torch", "state_dict", True)


def test_model_wrapper_without_prefix(tmp_path, src):
    torch.save({"model": src.state_dict(), "step": 3}, tmp_path / "ckpt.pt")
    dst = fresh()
    info = load_pretrained(tmp_path / "ckpt.pt", dst)
    assert_same(src, dst)
    assert (info["wrapper"], info["stripped_prefix"]) == ("model", False)


def test_legacy_non_zip_torch_file(tmp_path, src):
    torch.save(src.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    dst = fresh()
    load_pretrained(tmp_path / "old.pt", dst)
    assert_same(src, dst)


def test_pickle_needing_code_is_refused(tmp_path, src):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": src.state_dict(), "options": TrainerOptions()}, path)
    dst = fresh()
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"evil\.pt: needs arbitrary pickled code.*weights_only.*TrainerOpt"):
        load_pretrained(path, dst)
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


def _traced(src, path):
    """A TorchScript archive like OpenAI's release, with its integer ``input_resolution`` entry (the context
    length and vocabulary size entries are plain attributes of open_clip's CLIP: they cannot be buffers)."""
    src.register_buffer("input_resolution", torch.tensor(32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.trace(src, (torch.rand(1, 3, 32, 32), torch.zeros(1, 8, dtype=torch.long)), check_trace=False)
        ts.save(str(path))
    del src.input_resolution


def test_torchscript_needs_the_opt_in(tmp_path, src):
    path = tmp_path / "RN50.pt"
    _traced(src, path)
    assert sniff_format(path) == "torchscript"
    with pytest.raises(CheckpointError, match=r"RN50\.pt is a TorchScript archive.*clip\.allow_torchscript"):
        load_pretrained(path, fresh())
    dst = fresh()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        info = load_pretrained(path, dst, allow_torchscript=True)
    assert_same(src, dst)
    assert info["format"] == "torchscript" and info["n_tensors"] == len(src.state_dict())


def test_torchscript_detected_from_constants_pkl(tmp_path):
    path = tmp_path / "fake.pt"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("fake/data.pkl", b"\x80\x02}q\x00.")
        z.writestr("fake/constants.pkl", b"\x80\x02).")
    assert sniff_format(path) == "torchscript"
    with pytest.raises(CheckpointError, match="allow_torchscript"):
        load_pretrained(path, fresh())


def test_openai_int_entries_must_match_the_model(tmp_path, src):
    sd = dict(src.state_dict(), input_resolution=torch.tensor(32), context_length=torch.tensor(8),
              vocab_size=torch.tensor(50))
    torch.save(sd, tmp_path / "ok.pt")
    dst = fresh()
    load_pretrained(tmp_path / "ok.pt", dst)
    assert_same(src, dst)
    sd["input_resolution"] = torch.tensor(224)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"'input_resolution' = 224 does not match the model \(32\)"):
        load_pretrained(tmp_path / "bad.pt", fresh())


def test_constant_buffers_of_a_torchscript_copy_are_checked_then_dropped(tmp_path, src):
    sd = dict(src.state_dict(), attn_mask=src.attn_mask.clone())
    save_tensors(sd, tmp_path / "mask.safetensors")
    dst = fresh()
    load_pretrained(tmp_path / "mask.safetensors", dst)
    assert_same(src, dst)
    sd["attn_mask"] = torch.zeros_like(src.attn_mask)
    save_tensors(sd, tmp_path / "nomask.safetensors")
    with pytest.raises(CheckpointError, match=r"'attn_mask' differs from the model's"):
        load_pretrained(tmp_path / "nomask.safetensors", fresh())


def test_missing_unexpected_and_misshapen_keys_are_named(tmp_path, src):
    sd = src.state_dict()
    del sd["visual.layer2.1.conv2.weight"]
    sd["visual.extra"] = torch.zeros(1)
    save_tensors(sd, tmp_path / "keys.safetensors")
    with pytest.raises(CheckpointError, match=r"keys\.safetensors.*missing: 'visual\.layer2\.1\.conv2\.weight'; "
                                              r"unexpected: 'visual\.extra'"):
        load_pretrained(tmp_path / "keys.safetensors", fresh())
    bigger = tiny_clip(layers=[1, 2, 1, 1]).state_dict()
    bigger["token_embedding.weight"] = torch.zeros(60, 16)
    save_tensors(bigger, tmp_path / "shape.safetensors")
    with pytest.raises(CheckpointError, match=r"'token_embedding\.weight' has shape \(60, 16\), the model needs "
                                              r"\(50, 16\)"):
        load_pretrained(tmp_path / "shape.safetensors", fresh())


def test_non_finite_and_wrong_dtypes_are_refused(tmp_path, src):
    sd = src.state_dict()
    sd["visual.attnpool.c_proj.weight"][0, 0] = float("nan")
    save_tensors(sd, tmp_path / "nan.safetensors")
    with pytest.raises(CheckpointError, match=r"'visual\.attnpool\.c_proj\.weight' holds NaN"):
        load_pretrained(tmp_path / "nan.safetensors", fresh())
    sd = src.state_dict()
    sd["logit_scale"] = torch.tensor(1e300, dtype=torch.float64)  # finite in float64, infinite in float32
    torch.save(sd, tmp_path / "big.pt")
    with pytest.raises(CheckpointError, match=r"'logit_scale' holds NaN or infinite"):
        load_pretrained(tmp_path / "big.pt", fresh())
    sd = src.state_dict()
    sd["text_projection"] = sd["text_projection"].to(torch.int32)
    torch.save(sd, tmp_path / "int.pt")
    with pytest.raises(CheckpointError, match=r"'text_projection' has dtype torch\.int32"):
        load_pretrained(tmp_path / "int.pt", fresh())


@pytest.mark.parametrize("obj, message", [
    ([1, 2], "holds a list, not a state dict"),
    ({"epoch": 1, "optimizer": {}}, r"no state dict.*top-level keys: 'epoch', 'optimizer'"),
    ({"state_dict": {"a": 1}}, r"'state_dict' must map names to tensors; not tensors: 'a'"),
])
def test_pickles_without_a_state_dict_are_refused(tmp_path, obj, message):
    torch.save(obj, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match=message):
        load_pretrained(tmp_path / "x.pt", fresh())


def test_non_weights_files_are_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello world")
    with pytest.raises(CheckpointError, match=r"notes\.txt: not a weights file"):
        load_pretrained(tmp_path / "notes.txt", fresh())
    with pytest.raises(CheckpointError, match="missing weights file"):
        load_pretrained(tmp_path / "absent.safetensors", fresh())


def test_resnet_layers_are_every_bottleneck_conv2():
    model = tiny_clip()
    names = resnet_analysis_layers("visual", model.visual)
    assert names == ["visual.layer1.0.conv2", "visual.layer2.0.conv2", "visual.layer2.1.conv2",
                     "visual.layer3.0.conv2", "visual.layer4.0.conv2"]
    modules = dict(model.named_modules())
    assert all(modules[n].kernel_size == (3, 3) for n in names)
    assert resnet_analysis_layers("", model.visual)[0] == "layer1.0.conv2"
    assert resnet_analysis_layers("clip.visual.", model.visual)[0] == "clip.visual.layer1.0.conv2"
    cfg = open_clip.get_model_config("RN50")
    with torch.device("meta"):
        rn50 = open_clip.CLIP(**cfg)
    names = resnet_analysis_layers("visual", rn50.visual)
    assert len(names) == 16 and names[-1] == "visual.layer4.2.conv2"
    with pytest.raises(TypeError, match="ModifiedResNet"):
        resnet_analysis_layers("visual", torch.nn.Conv2d(3, 3, 3))


def test_vit_layers_are_the_residual_blocks():
    with torch.device("meta"):
        vit = open_clip.CLIP(embed_dim=16, vision_cfg=dict(layers=3, width=16, patch_size=8, image_size=16,
                                                           head_width=8),
                             text_cfg=dict(context_length=8, vocab_size=50, width=16, heads=2, layers=1))
    names = vit_analysis_layers("visual", vit.visual)
    assert names == [f"visual.transformer.resblocks.{i}" for i in range(3)]
    assert all(n in dict(vit.named_modules()) for n in names)
    with pytest.raises(TypeError, match="VisionTransformer"):
        vit_analysis_layers("visual", tiny_clip().visual)
