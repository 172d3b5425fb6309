"""The paper's small ViTs: timm's VisionTransformer with embed 384, depth 8, 8 heads (MLP ratio 4, a class
token, qkv bias: the same block as the authors' timm-derived copy).

The name gives the image size the paper used and the patch size: ``vit_paper_32_4`` (CIFAR, 64 tokens),
``vit_paper_64_8`` (Tiny-ImageNet, 64 tokens), ``vit_paper_224_16`` (ImageNet, 196 tokens). The model is
built for the dataset's image size, which must be a multiple of the patch size.
"""

from __future__ import annotations

import warnings
from functools import partial

from timm.models.vision_transformer import VisionTransformer

from dualadam.tasks.image.data.info import DatasetInfo

PAPER_VIT = dict(embed_dim=384, depth=8, num_heads=8)


def paper_vit(paper_image_size: int, patch_size: int, info: DatasetInfo, **kwargs) -> VisionTransformer:
    if info.image_size % patch_size:
        raise ValueError(f"a ViT with {patch_size}-pixel patches needs an image size that is a multiple of "
                         f"{patch_size}; dataset {info.name} gives {info.image_size}")
    if info.image_size != paper_image_size:
        warnings.warn(f"vit_paper_{paper_image_size}_{patch_size} was specified for {paper_image_size}-pixel "
                      f"images; building it for {info.name}'s {info.image_size} pixels "
                      f"({(info.image_size // patch_size) ** 2} patches)", stacklevel=3)
    return VisionTransformer(img_size=info.image_size, patch_size=patch_size, in_chans=info.in_chans,
                             num_classes=info.num_classes, **{**PAPER_VIT, **kwargs})


vit_paper_32_4 = partial(paper_vit, 32, 4)
vit_paper_64_8 = partial(paper_vit, 64, 8)
vit_paper_224_16 = partial(paper_vit, 224, 16)
