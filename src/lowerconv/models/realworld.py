"""Real-world models from libraries outside torchvision, to lower and verify as the zoo does.

torchvision's builders are one family of code. The models people lower come from
``transformers``, ``diffusers``, ``segmentation_models_pytorch``, ``ultralytics`` and ``kornia``
as well, and those bring what torchvision does not: forwards that return a library's output
class (``ModelOutput``, diffusers' output dataclasses, dicts inside tuples), ``Conv1d`` and
``ConvTranspose2d`` next to ``Conv2d``, ``nn.Conv2d`` subclasses with their own ``forward``,
code that reads a conv's ``stride`` and ``kernel_size`` to pad its input, and ``F.conv2d``
called on a kernel built inside a forward that ``torch.fx`` cannot trace (``isinstance``
checks, data-dependent loops).

Each :class:`RealWorldModel` is built from a config with random weights (nothing is downloaded),
from a fixed seed, shrunk until it lowers and verifies in seconds on one CPU thread: small hidden
sizes, one or two blocks per stage, 64x64 images.  The libraries are the optional extra ``zoo``
(``pip install -e ".[zoo]"``) and are imported only when a model is built:
:func:`realworld_models` lists the models whose library is installed, and
:func:`lowerconv.models.resolve_model` and :mod:`lowerconv.models.zoo` accept their names.

    >>> entry = realworld_models()["hf_resnet"]
    >>> model, inputs = entry.build()  # eval mode, seed 0
    >>> lowered = lowerconv.lower(model)
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import torch
from torch import nn

from ..errors import LoweringError

__all__ = [
    "LIBRARIES",
    "REALWORLD_MODELS",
    "RealWorldModel",
    "available_libraries",
    "realworld_models",
]

# The libraries of the `zoo` extra, by import name, in the order the zoo runs them; the values
# are the names pip installs them by.
LIBRARIES = {
    "transformers": "transformers",
    "diffusers": "diffusers",
    "segmentation_models_pytorch": "segmentation-models-pytorch",
    "ultralytics": "ultralytics",
    "kornia": "kornia",
}

IMAGE = 64  # the image side of every image model: a few seconds per model on 2 cores


@dataclass(frozen=True)
class RealWorldModel:
    """One registry entry: ``builder(batch_size)`` returns ``(model, example_inputs)``.

    ``library`` is the import name of the library the model comes from, also its zoo category.
    ``origin`` says what is built, for :class:`~lowerconv.models.ResolvedModel`.
    """

    name: str
    library: str
    description: str
    origin: str
    builder: Callable[[int], tuple[nn.Module, tuple]]

    def build(self, *, seed: int = 0, batch_size: int = 1) -> tuple[nn.Module, tuple]:
        """The model in eval mode and its example inputs, the same for the same ``seed``."""
        _require(self.library, self.name)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, inputs = self.builder(batch_size)
        return model.eval(), inputs


def available_libraries() -> tuple[str, ...]:
    """The libraries of :data:`LIBRARIES` that are installed, in that order."""
    return tuple(library for library in LIBRARIES if _installed(library))


def realworld_models() -> dict[str, RealWorldModel]:
    """The registry, name -> entry, for the models whose library is installed."""
    installed = available_libraries()
    return {name: entry for name, entry in REALWORLD_MODELS.items() if entry.library in installed}


@cache
def _installed(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


def _require(library: str, name: str) -> None:
    if not _installed(library):
        raise LoweringError(
            f"model {name!r} comes from {LIBRARIES[library]}, which is not installed. Fix: "
            f'pip install -e ".[zoo]" (or pip install {LIBRARIES[library]})'
        )


def _images(batch_size: int, channels: int = 3, size: int = IMAGE) -> torch.Tensor:
    return torch.randn(batch_size, channels, size, size)


# -- transformers --------------------------------------------------------------------------------
# Every forward returns a ModelOutput (an OrderedDict subclass with attributes), the output type a
# user of these models sees.


def _he_init(model: nn.Module) -> nn.Module:
    """Re-draw the weights of a transformers model so its activations keep their scale.

    transformers initialises weights with std ``initializer_range`` (0.02), a placeholder for
    pretrained weights: through a dozen random layers the activations vanish (MobileNetV2's
    output was 1e-24, MobileViT's exactly 0), and a wrong lowering would then compare equal.
    He initialisation (``kaiming_normal_``, fan-in) of every conv and linear weight, and the
    layers' own ``reset_parameters`` for the rest, keeps every output near unit scale.
    """
    for module in model.modules():
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
    return model


def _hf_resnet(batch_size: int):
    from transformers import ResNetConfig, ResNetModel

    config = ResNetConfig(
        embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic"
    )
    return _he_init(ResNetModel(config)), (_images(batch_size),)


def _hf_convnext(batch_size: int):
    from transformers import ConvNextConfig, ConvNextModel

    config = ConvNextConfig(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2)
    return _he_init(ConvNextModel(config)), (_images(batch_size),)


def _hf_vit(batch_size: int):
    from transformers import ViTConfig, ViTModel

    config = ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=IMAGE,
        patch_size=8,
    )
    return _he_init(ViTModel(config)), (_images(batch_size),)


def _hf_swin(batch_size: int):
    from transformers import SwinConfig, SwinModel

    config = SwinConfig(
        image_size=IMAGE, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[1, 2], window_size=4
    )
    return _he_init(SwinModel(config)), (_images(batch_size),)


def _hf_segformer(batch_size: int):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    config = SegformerConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[4, 2],
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        decoder_hidden_size=32,
        num_labels=5,
    )
    return _he_init(SegformerForSemanticSegmentation(config)), (_images(batch_size),)


def _hf_dpt(batch_size: int):
    from transformers import DPTConfig, DPTForDepthEstimation

    config = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=IMAGE,
        patch_size=8,
        backbone_out_indices=[0, 1, 2, 3],
        neck_hidden_sizes=[8, 16, 32, 32],
        fusion_hidden_size=16,
    )
    return _he_init(DPTForDepthEstimation(config)), (_images(batch_size),)


def _hf_glpn(batch_size: int):
    from transformers import GLPNConfig, GLPNForDepthEstimation

    config = GLPNConfig(
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[4, 2],
        hidden_sizes=[16, 32],
        num_attention_heads=[1, 2],
        decoder_hidden_size=16,
    )
    return _he_init(GLPNForDepthEstimation(config)), (_images(batch_size),)


def _hf_mobilevit(batch_size: int):
    from transformers import MobileViTConfig, MobileViTModel

    config = MobileViTConfig(
        image_size=IMAGE,
        hidden_sizes=[16, 24, 32],
        neck_hidden_sizes=[8, 8, 16, 16, 24, 32, 64],
        num_attention_heads=2,
    )
    return _he_init(MobileViTModel(config)), (_images(batch_size),)


def _hf_cvt(batch_size: int):
    from transformers import CvtConfig, CvtModel

    config = CvtConfig(
        embed_dim=[16, 32],
        num_heads=[1, 2],
        depth=[1, 2],
        patch_sizes=[7, 3],
        patch_stride=[4, 2],
        patch_padding=[2, 1],
        mlp_ratio=[2.0, 2.0],
        attention_drop_rate=[0.0, 0.0],
        drop_rate=[0.0, 0.0],
        drop_path_rate=[0.0, 0.0],
        qkv_bias=[True, True],
        cls_token=[False, True],
        qkv_projection_method=["dw_bn", "dw_bn"],
        kernel_qkv=[3, 3],
        padding_kv=[1, 1],
        stride_kv=[2, 2],
        padding_q=[1, 1],
        stride_q=[1, 1],
    )
    return _he_init(CvtModel(config)), (_images(batch_size),)


def _hf_mobilenet_v2(batch_size: int):
    from transformers import MobileNetV2Config, MobileNetV2Model

    config = MobileNetV2Config(image_size=IMAGE, depth_multiplier=0.35, tf_padding=True)
    return _he_init(MobileNetV2Model(config)), (_images(batch_size),)


def _hf_wav2vec2(batch_size: int):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[16, 16, 16],
        conv_stride=[5, 2, 2],
        conv_kernel=[10, 3, 3],
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    return _he_init(Wav2Vec2Model(config)), (torch.randn(batch_size, 1600),)


def _hf_whisper_encoder(batch_size: int):
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    config = WhisperConfig(
        num_mel_bins=16,
        d_model=32,
        encoder_layers=2,
        encoder_attention_heads=2,
        encoder_ffn_dim=64,
        max_source_positions=32,
    )
    # The encoder takes exactly 2 * max_source_positions frames (its conv2 has stride 2).
    return _he_init(WhisperEncoder(config)), (torch.randn(batch_size, 16, 64),)


# -- diffusers -----------------------------------------------------------------------------------


def _diffusers_unet2d(batch_size: int):
    from diffusers import UNet2DModel

    model = UNet2DModel(
        sample_size=32,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    return model, (torch.randn(batch_size, 3, 32, 32), torch.tensor(10))


def _diffusers_unet2d_condition(batch_size: int):
    from diffusers import UNet2DConditionModel

    model = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=16,
        attention_head_dim=8,
    )
    inputs = (torch.randn(batch_size, 4, 16, 16), torch.tensor(10), torch.randn(batch_size, 7, 16))
    return model, inputs


def _diffusers_autoencoder_kl(batch_size: int):
    from diffusers import AutoencoderKL

    model = AutoencoderKL(
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    return model, (torch.randn(batch_size, 3, 32, 32),)


# -- segmentation_models_pytorch -----------------------------------------------------------------
# smp's own encoders (not its `tu-` timm ones), built with encoder_weights=None: no download.


def _smp_unet(batch_size: int):
    import segmentation_models_pytorch as smp

    model = smp.Unet(
        encoder_name="resnet18",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(32, 16, 8),
        classes=2,
    )
    return model, (_images(batch_size),)


def _smp_fpn(batch_size: int):
    import segmentation_models_pytorch as smp

    model = smp.FPN(
        encoder_name="dpn68",
        encoder_weights=None,
        decoder_pyramid_channels=32,
        decoder_segmentation_channels=32,
        classes=2,
    )
    return model, (_images(batch_size),)


def _smp_deeplabv3plus(batch_size: int):
    import segmentation_models_pytorch as smp

    model = smp.DeepLabV3Plus(
        encoder_name="resnet18",
        encoder_weights=None,
        decoder_channels=32,
        classes=2,
    )
    return model, (_images(batch_size),)


def _smp_efficientnet_unet(batch_size: int):
    import segmentation_models_pytorch as smp

    model = smp.Unet(
        encoder_name="efficientnet-b0",
        encoder_weights=None,
        encoder_depth=3,
        decoder_channels=(32, 16, 8),
        classes=2,
    )
    return model, (_images(batch_size),)


# -- ultralytics ---------------------------------------------------------------------------------
# Built from the model YAML files ultralytics ships, so nothing is downloaded; the YAML's scale
# letter (n) picks the smallest width and depth.


def _ultralytics_yolov8n(batch_size: int):
    from ultralytics.nn.tasks import DetectionModel

    return DetectionModel("yolov8n.yaml", nc=4, verbose=False), (_images(batch_size),)


def _ultralytics_yolo11n_seg(batch_size: int):
    from ultralytics.nn.tasks import SegmentationModel

    return SegmentationModel("yolo11n-seg.yaml", nc=4, verbose=False), (_images(batch_size),)


# -- kornia --------------------------------------------------------------------------------------


class _KorniaEdges(nn.Module):
    """A conv stem, then kornia's Gaussian blur and Sobel filters on its output.

    kornia's filters build their kernels in ``forward`` and call ``F.conv2d`` on them after
    ``KORNIA_CHECK`` (``isinstance``) tests of the input, which ``torch.fx`` cannot trace.
    """

    def __init__(self) -> None:
        super().__init__()
        import kornia

        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.blur = kornia.filters.GaussianBlur2d((5, 5), (1.5, 1.5))
        self.sobel = kornia.filters.Sobel()
        self.head = nn.Conv2d(4, 2, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.sobel(self.blur(self.stem(image))))


class _KorniaCanny(nn.Module):
    """kornia's Canny edge detector on a conv's output: Gaussian blur, Sobel, non-maximum
    suppression (a conv with a bank of 8 kernels) and hysteresis, a loop of convolutions that
    runs until the edge map stops changing: a data-dependent number of ``F.conv2d`` calls."""

    def __init__(self) -> None:
        super().__init__()
        import kornia

        self.stem = nn.Conv2d(3, 3, 3, padding=1)
        self.canny = kornia.filters.Canny(low_threshold=0.1, high_threshold=0.2)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.canny(torch.sigmoid(self.stem(image)))


def _kornia_edges(batch_size: int):
    return _KorniaEdges(), (_images(batch_size),)


def _kornia_canny(batch_size: int):
    return _KorniaCanny(), (_images(batch_size),)


REALWORLD_MODELS: dict[str, RealWorldModel] = {
    entry.name: entry
    for entry in (
        # transformers: every forward returns a ModelOutput
        RealWorldModel(
            "hf_resnet",
            "transformers",
            "ResNet: Conv2d + BatchNorm, strided 7x7 stem, 1x1 strided shortcuts",
            "transformers ResNetModel",
            _hf_resnet,
        ),
        RealWorldModel(
            "hf_convnext",
            "transformers",
            "ConvNeXt: 4x4 stride-4 patchify stem, 7x7 depthwise convs, 2x2 downsampling convs",
            "transformers ConvNextModel",
            _hf_convnext,
        ),
        RealWorldModel(
            "hf_vit",
            "transformers",
            "ViT: one Conv2d with kernel = stride = 8, the patch embedding; a dtype check in forward",
            "transformers ViTModel",
            _hf_vit,
        ),
        RealWorldModel(
            "hf_swin",
            "transformers",
            "Swin: patch-embedding Conv2d after a pad that depends on the input size",
            "transformers SwinModel",
            _hf_swin,
        ),
        RealWorldModel(
            "hf_segformer",
            "transformers",
            "SegFormer: overlapping 7x7/3x3 patch embeddings, strided spatial-reduction convs in "
            "attention, 3x3 depthwise convs in the MLPs, 1x1 decode head",
            "transformers SegformerForSemanticSegmentation",
            _hf_segformer,
        ),
        RealWorldModel(
            "hf_dpt",
            "transformers",
            "DPT depth: ViT patch embedding, ConvTranspose2d and strided Conv2d reassembly, 3x3 "
            "fusion convs, depth head",
            "transformers DPTForDepthEstimation",
            _hf_dpt,
        ),
        RealWorldModel(
            "hf_glpn",
            "transformers",
            "GLPN depth: SegFormer-style encoder, selective feature fusion convs, depth head",
            "transformers GLPNForDepthEstimation",
            _hf_glpn,
        ),
        RealWorldModel(
            "hf_mobilevit",
            "transformers",
            "MobileViT: inverted residuals (depthwise 3x3), conv-transformer-conv blocks",
            "transformers MobileViTModel",
            _hf_mobilevit,
        ),
        RealWorldModel(
            "hf_cvt",
            "transformers",
            "CvT: strided conv token embeddings, depthwise conv (+BatchNorm) q/k/v projections",
            "transformers CvtModel",
            _hf_cvt,
        ),
        RealWorldModel(
            "hf_mobilenet_v2",
            "transformers",
            "MobileNetV2 with TensorFlow 'SAME' padding: an F.pad sized from the input before "
            "each strided conv, depthwise 3x3 convs",
            "transformers MobileNetV2Model",
            _hf_mobilenet_v2,
        ),
        RealWorldModel(
            "hf_wav2vec2",
            "transformers",
            "wav2vec 2.0 on raw audio: Conv1d feature extractor and a weight-normed grouped "
            "Conv1d positional embedding; no 2-D conv at all",
            "transformers Wav2Vec2Model",
            _hf_wav2vec2,
        ),
        RealWorldModel(
            "hf_whisper_encoder",
            "transformers",
            "Whisper's encoder on a log-mel spectrogram: two Conv1d, a shape check in forward; no "
            "2-D conv",
            "transformers WhisperEncoder",
            _hf_whisper_encoder,
        ),
        # diffusers: forwards return diffusers' BaseOutput dataclasses
        RealWorldModel(
            "diffusers_unet2d",
            "diffusers",
            "DDPM-style UNet: 3x3 convs, stride-2 conv downsampling, nearest upsampling + conv, "
            "self-attention, timestep embedding; (sample, timestep) inputs",
            "diffusers UNet2DModel",
            _diffusers_unet2d,
        ),
        RealWorldModel(
            "diffusers_unet2d_condition",
            "diffusers",
            "Stable-Diffusion-style UNet: 1x1 proj_in/proj_out convs around cross-attention "
            "transformers, on (latents, timestep, encoder_hidden_states)",
            "diffusers UNet2DConditionModel",
            _diffusers_unet2d_condition,
        ),
        RealWorldModel(
            "diffusers_autoencoder_kl",
            "diffusers",
            "VAE: encoder with padded stride-2 convs, 1x1 quant convs, sampling-free posterior "
            "mode, decoder with upsampling convs",
            "diffusers AutoencoderKL",
            _diffusers_autoencoder_kl,
        ),
        # segmentation_models_pytorch: forwards return a tensor
        RealWorldModel(
            "smp_unet",
            "segmentation_models_pytorch",
            "U-Net on a ResNet-18 encoder: skip concatenations, nearest upsampling + 3x3 convs",
            "segmentation_models_pytorch Unet(resnet18)",
            _smp_unet,
        ),
        RealWorldModel(
            "smp_fpn",
            "segmentation_models_pytorch",
            "FPN on a DPN-68 encoder: grouped 3x3 convs (32 groups), dual-path concatenations, "
            "1x1 lateral convs, GroupNorm heads",
            "segmentation_models_pytorch FPN(dpn68)",
            _smp_fpn,
        ),
        RealWorldModel(
            "smp_deeplabv3plus",
            "segmentation_models_pytorch",
            "DeepLabV3+ on a dilated ResNet-18: ASPP with dilated depthwise-separable convs and "
            "image pooling",
            "segmentation_models_pytorch DeepLabV3Plus(resnet18)",
            _smp_deeplabv3plus,
        ),
        RealWorldModel(
            "smp_efficientnet_unet",
            "segmentation_models_pytorch",
            "U-Net on EfficientNet-B0: Conv2dStaticSamePadding, an nn.Conv2d subclass whose "
            "forward pads then calls F.conv2d",
            "segmentation_models_pytorch Unet(efficientnet-b0)",
            _smp_efficientnet_unet,
        ),
        # ultralytics: a tuple of a tensor and a dict of tensors
        RealWorldModel(
            "ultralytics_yolov8n",
            "ultralytics",
            "YOLOv8n detector: Conv2d + BatchNorm + SiLU blocks, C2f splits and concatenations, "
            "a forward that routes each layer's inputs by index, a DFL head (a fixed 1x1 conv)",
            "ultralytics DetectionModel(yolov8n.yaml)",
            _ultralytics_yolov8n,
        ),
        RealWorldModel(
            "ultralytics_yolo11n_seg",
            "ultralytics",
            "YOLO11n segmenter: C3k2 blocks, C2PSA attention with a depthwise positional conv, "
            "and a mask prototype head that upsamples with ConvTranspose2d",
            "ultralytics SegmentationModel(yolo11n-seg.yaml)",
            _ultralytics_yolo11n_seg,
        ),
        # kornia: filters built in forward, behind isinstance checks
        RealWorldModel(
            "kornia_edges",
            "kornia",
            "conv stem, kornia GaussianBlur2d and Sobel (F.conv2d on kernels built in forward, "
            "after isinstance checks), 1x1 head",
            "kornia GaussianBlur2d + Sobel in a small module",
            _kornia_edges,
        ),
        RealWorldModel(
            "kornia_canny",
            "kornia",
            "conv stem, kornia Canny: blur, Sobel, non-maximum suppression and a hysteresis loop "
            "of F.conv2d calls run until the edges stop changing",
            "kornia Canny in a small module",
            _kornia_canny,
        ),
    )
}
