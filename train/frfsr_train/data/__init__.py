"""Data: PIL-exact bicubic degradation, real-world degradations, augmentations and dataset layouts (CUFED, CUFED5, pairs)."""
from .augment import SHUFFLE_LEVELS, augment_pair, color_jitter, flip_rot, sample_flip_rot, shuffle_blocks
from .datasets import (DEFAULT_REF_JITTER, IMG_EXTENSIONS, CUFED5Dataset, CUFEDTrainDataset, DataLayoutError,
                       PairFolderDataset, list_images, load_image)
from .degrade import bicubic_downsample, bicubic_resize, bicubic_upsample, modcrop
from .realworld import (DegradationStage, FinalStage, RealWorldDegradation, RealWorldOptions, degrade_realworld,
                        random_kernels)

__all__ = [
    "bicubic_downsample", "bicubic_upsample", "bicubic_resize", "modcrop",
    "flip_rot", "sample_flip_rot", "augment_pair", "shuffle_blocks", "color_jitter", "SHUFFLE_LEVELS",
    "CUFEDTrainDataset", "CUFED5Dataset", "PairFolderDataset", "DataLayoutError",
    "load_image", "list_images", "IMG_EXTENSIONS", "DEFAULT_REF_JITTER",
    "RealWorldDegradation", "RealWorldOptions", "DegradationStage", "FinalStage", "degrade_realworld",
    "random_kernels",
]
