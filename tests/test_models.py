"""lowerconv.models: MODEL spellings, example inputs per category, and --weights files."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from lowerconv.errors import LoweringError
from lowerconv.models import (
    default_image_size,
    load_weights,
    realworld,
    resolve_model,
    suggest_model_names,
    torchvision_models,
)
from lowerconv.models.realworld import REALWORLD_MODELS

FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn


    def gray_net():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1))


    def not_a_model():
        return 42


    def broken():
        raise RuntimeError("factory exploded")


    GrayNet = gray_net
    """
)


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    path = tmp_path / "my_nets.py"
    path.write_text(FACTORY_SOURCE)
    return path


# -- torchvision names -----------------------------------------------------------------------------

# (name, image size, expected input shapes, run it): one per supported category.  raft is
# not run: its 12 refinement steps take seconds on a busy 2-core machine.
TORCHVISION_CASES = [
    ("resnet18", 32, [(2, 3, 32, 32)], True),
    ("quantized_resnet18", 32, [(2, 3, 32, 32)], True),
    ("lraspp_mobilenet_v3_large", 32, [(2, 3, 32, 32)], True),
    ("r3d_18", 32, [(2, 3, 16, 32, 32)], True),
    ("raft_small", 128, [(2, 3, 128, 128), (2, 3, 128, 128)], False),
]


@pytest.mark.parametrize(
    ("name", "size", "shapes", "run"), TORCHVISION_CASES, ids=[c[0] for c in TORCHVISION_CASES]
)
def test_torchvision_inputs_follow_the_category(name, size, shapes, run):
    resolved = resolve_model(name, batch_size=2, image_size=size)
    assert [tuple(t.shape) for t in resolved.example_inputs] == shapes
    assert not resolved.model.training
    if run:
        with torch.no_grad():
            resolved.model(*resolved.example_inputs)  # the inputs fit the model


@pytest.mark.parametrize(
    ("name", "size"),
    [("resnet18", 224), ("inception_v3", 299), ("r3d_18", 112), ("vit_h_14", 224)],
)
def test_default_image_size_is_the_models_own(name, size):
    assert default_image_size(name) == size


def test_raft_needs_sides_that_are_multiples_of_8():
    with pytest.raises(
        LoweringError, match=r"multiples of 8 and at least 128; got --image-size 130"
    ):
        resolve_model("raft_small", image_size=130)


def test_same_seed_same_model_and_input_other_seed_differs():
    a, b = (resolve_model("resnet18", image_size=16, seed=3) for _ in range(2))
    c = resolve_model("resnet18", image_size=16, seed=4)
    assert torch.equal(a.model.conv1.weight, b.model.conv1.weight)
    assert torch.equal(a.example_inputs[0], b.example_inputs[0])
    assert not torch.equal(a.model.conv1.weight, c.model.conv1.weight)
    assert not torch.equal(a.example_inputs[0], c.example_inputs[0])


def test_building_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    resolve_model("resnet18", image_size=16)
    assert torch.equal(torch.rand(3), expected)


def test_vit_is_built_for_the_image_size_and_refuses_a_non_multiple_of_its_patch():
    with pytest.raises(LoweringError, match=r"multiple of 32; got 50.*--image-size 32"):
        resolve_model("vit_b_32", image_size=50)


def test_unknown_name_suggests_close_ones():
    with pytest.raises(LoweringError, match=r"unknown model 'resnet81'.*Did you mean resnet18"):
        resolve_model("resnet81")
    assert suggest_model_names("mobilenetv2")[0] == "mobilenet_v2"


def test_detection_models_take_a_list_of_images_and_keep_every_box():
    resolved = resolve_model("ssdlite320_mobilenet_v3_large", batch_size=2, image_size=96)
    (images,) = resolved.example_inputs
    assert isinstance(images, list) and [tuple(i.shape) for i in images] == [(3, 96, 96)] * 2
    assert all(float(i.min()) >= 0 and float(i.max()) <= 1 for i in images)
    assert resolved.preferred_dtype == torch.float64
    assert resolved.model.score_thresh == 0.0
    rcnn = resolve_model("fasterrcnn_mobilenet_v3_large_320_fpn", image_size=128)
    assert rcnn.model.roi_heads.score_thresh == 0.0
    assert rcnn.model.transform.min_size == (128,) and rcnn.model.transform.max_size == 128


def test_below_documented_minimum_size_gets_a_hint():
    resolved = resolve_model("squeezenet1_0", image_size=16)
    assert "--image-size 21" in resolved.failure_hint()
    assert resolve_model("squeezenet1_0", image_size=32).failure_hint() is None


# -- real-world names ------------------------------------------------------------------------------


def test_realworld_names_never_shadow_torchvision_names():
    assert not set(REALWORLD_MODELS) & set(torchvision_models())


def test_realworld_name_resolves_to_its_registry_inputs():
    pytest.importorskip("kornia", reason='the zoo extra is not installed: pip install -e ".[zoo]"')
    resolved = resolve_model("kornia_edges", batch_size=2, seed=1)
    assert [tuple(t.shape) for t in resolved.example_inputs] == [(2, 3, 64, 64)]
    assert "kornia" in resolved.origin and "random init, seed 1" in resolved.origin
    assert not resolved.model.training
    again = resolve_model("kornia_edges", batch_size=2, seed=1)
    assert torch.equal(again.example_inputs[0], resolved.example_inputs[0])
    with pytest.raises(LoweringError, match=r"fixed example inputs.*Fix: drop --image-size"):
        resolve_model("kornia_edges", image_size=32)


def test_realworld_name_without_its_library_names_the_extra(monkeypatch):
    monkeypatch.setattr(realworld, "_installed", lambda library: False)
    with pytest.raises(LoweringError, match=r"transformers, which is not installed.*\[zoo\]"):
        resolve_model("hf_resnet")
    assert suggest_model_names("hf_resnt")[0] == "hf_resnet"


# -- factories -------------------------------------------------------------------------------------


def test_file_factory_gets_its_input_channels_from_its_first_conv(factory_file):
    resolved = resolve_model(f"{factory_file}:gray_net", batch_size=3, image_size=10)
    assert isinstance(resolved.model, nn.Sequential)
    assert resolved.example_inputs[0].shape == (3, 1, 10, 10)


def test_module_factory(factory_file, monkeypatch):
    monkeypatch.syspath_prepend(str(factory_file.parent))
    resolved = resolve_model("my_nets:GrayNet", image_size=8)
    assert resolved.model(*resolved.example_inputs).shape == (1, 2, 6, 6)


# (spec template, expected message) for each way a factory spec goes wrong.
FACTORY_ERRORS = [
    ("{file}:gray_nt", r"has no attribute 'gray_nt'\. Did you mean gray_net"),
    ("{file}:not_a_model", r"not_a_model\(\) returned an int, not an nn\.Module"),
    ("{file}:broken", r"calling broken\(\) raised RuntimeError: factory exploded"),
    ("{dir}/absent.py:make", r"no such file"),
    ("no_such_package_xyz.models:make", r"cannot import 'no_such_package_xyz\.models'"),
    ("{file}:", r"a name on both sides of the ':'"),
]


@pytest.mark.parametrize(
    ("template", "message"), FACTORY_ERRORS, ids=[c[0] for c in FACTORY_ERRORS]
)
def test_factory_mistakes_are_explained(factory_file, template, message):
    spec = template.format(file=factory_file, dir=factory_file.parent)
    with pytest.raises(LoweringError, match=message):
        resolve_model(spec)


def test_a_file_that_fails_to_import_is_explained(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("import torch\nraise ImportError('needs a GPU library')\n")
    with pytest.raises(LoweringError, match=r"importing .*bad\.py raised ImportError: needs a GPU"):
        resolve_model(f"{path}:make")


def test_a_file_imports_the_modules_next_to_it(tmp_path):
    # As `python net.py` would: the file's folder is on sys.path while it is imported, and only then.
    (tmp_path / "lowerconv_test_blocks.py").write_text(
        "from torch import nn\n\ndef block():\n    return nn.Conv2d(3, 4, 3)\n"
    )
    (tmp_path / "net.py").write_text(
        "from torch import nn\nfrom lowerconv_test_blocks import block\n\n"
        "def build():\n    return nn.Sequential(block(), nn.ReLU())\n"
    )
    before = list(sys.path)
    try:
        resolved = resolve_model(f"{tmp_path / 'net.py'}:build", image_size=8)
    finally:
        sys.modules.pop("lowerconv_test_blocks", None)
    assert isinstance(resolved.model[0], nn.Conv2d)
    assert sys.path == before


OWN_MODELS_SOURCE = textwrap.dedent(
    """
    from torch import nn
    from torch.nn import Conv2d  # imported: not one of the file's own


    class Net(nn.Module):
        def forward(self, x):
            return x


    class Settings:  # not an nn.Module
        pass


    def build_net():
        return Net()
    """
)


def test_a_file_without_a_factory_names_the_ones_it_defines(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text(OWN_MODELS_SOURCE)
    with pytest.raises(LoweringError) as info:
        resolve_model(str(path))
    message = str(info.value)
    assert f"e.g. {path}:build_net. {path} defines build_net, Net" in message
    assert "make_model" not in message and "Conv2d" not in message and "Settings" not in message
    with pytest.raises(
        LoweringError, match=rf"has no attribute 'make_model'\. {path} defines build_net, Net"
    ):
        resolve_model(f"{path}:make_model")


# -- weights ---------------------------------------------------------------------------------------


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))


def _trained_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(7)
    return {k: torch.randn_like(v.float()).to(v.dtype) for k, v in _net().state_dict().items()}


@pytest.mark.parametrize(
    "wrap",
    [
        lambda s: s,
        lambda s: {"state_dict": s, "epoch": 3},
        lambda s: {"model": s, "optimizer": {}},
        lambda s: {f"module.{k}": v for k, v in s.items()},
    ],
    ids=["state_dict", "under_state_dict", "under_model", "data_parallel_prefix"],
)
def test_weights_load_in_every_common_layout(tmp_path, wrap):
    state = _trained_state()
    path = tmp_path / "w.pt"
    torch.save(wrap(state), path)
    net = _net()
    load_weights(net, path)
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_weights_with_other_keys_name_missing_and_unexpected(tmp_path):
    state = _trained_state()
    state["head.weight"] = state.pop("0.weight")
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(LoweringError) as info:
        load_weights(_net(), path, model_name="net")
    message = str(info.value)
    assert "does not match net" in message
    assert "1 missing key(s): 0.weight" in message
    assert "1 unexpected key(s): head.weight" in message


def test_weights_of_another_shape_are_named(tmp_path):
    state = _trained_state()
    state["0.weight"] = torch.zeros(4, 1, 5, 5)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    with pytest.raises(
        LoweringError, match=r"0\.weight: file \(4, 1, 5, 5\) vs model \(4, 1, 3, 3\)"
    ):
        load_weights(_net(), path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            b"this is not a checkpoint",
            r"not a checkpoint torch\.load\(weights_only=True\) can read",
        ),
        (
            b"not a checkpoint",
            r"can read \(not a zip archive .*UnpicklingError: Unsupported operand",
        ),
        ([torch.zeros(1)], r"holds a list, not a state_dict"),
        (nn.Linear(2, 2), r"pickled Python objects \(torch\.nn\.modules\.linear\.Linear\)"),
    ],
    ids=["garbage", "garbage_unpickled", "list_of_tensors", "whole_module"],
)
def test_files_that_are_no_state_dict_are_refused(tmp_path, content, message):
    path = tmp_path / "w.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(LoweringError, match=message):
        load_weights(_net(), path)


def test_missing_weights_file(tmp_path):
    with pytest.raises(LoweringError, match="no such file"):
        load_weights(_net(), tmp_path / "absent.pt")


WEIGHT_NAMES = ["DEFAULT", "IMAGENET1K_V1", "ResNet18_Weights.IMAGENET1K_V1"]


@pytest.mark.parametrize("name", WEIGHT_NAMES)
def test_weights_named_like_torchvision_pretrained_say_nothing_is_downloaded(name):
    with pytest.raises(LoweringError) as info:
        load_weights(_net(), name, model_name="resnet18")
    message = str(info.value)
    assert "downloads none: --weights takes a state_dict file" in message
    assert f"get_model('resnet18', weights='{name}').state_dict(), 'resnet18.pt')" in message


def test_weights_directory_is_called_a_directory(tmp_path):
    torch.save(_net().state_dict(), tmp_path / "net.pt")
    with pytest.raises(
        LoweringError, match=r"is a directory \(it holds net\.pt\); --weights takes one"
    ):
        load_weights(_net(), tmp_path)


def test_a_zero_initialised_head_is_redrawn_so_the_output_proves_something():
    """torchvision zero-initialises vit's classification head: every input would give the
    output 0, and a verification of it would be inconclusive.  The built-in models redraw it."""
    from lowerconv.models import redraw_zero_linears

    resolved = resolve_model("vit_b_16", image_size=32)
    head = resolved.model.heads.head
    assert head.weight.abs().max() > 0
    assert resolved.model(*resolved.example_inputs).abs().max() > 0

    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    nn.init.zeros_(model[1].weight)
    before = model[0].weight.clone()
    assert redraw_zero_linears(model, seed=0) == ["1"]
    assert torch.equal(model[0].weight, before)  # only the all-zero weight is redrawn
    again = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    nn.init.zeros_(again[1].weight)
    redraw_zero_linears(again, seed=0)
    assert torch.equal(again[1].weight, model[1].weight)  # from the seed: reproducible
