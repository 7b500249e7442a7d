"""Training data: the procedural mannequin world, the dataset folder format and their torch datasets."""

from .folder import DataError, FolderDataset, WorldDataset, read_image, read_video, write_video
from .world import (KEYPOINT_NAMES, LABELS, LOWER_TYPES, MOTION_PROMPTS, MOTIONS, PATTERNS, SPLIT_SEEDS, TEST_SEEDS,
                    TRAIN_SEEDS, UPPER_TYPES, VAL_SEEDS, Background, LowerGarment, MannequinWorld, Motion, Person,
                    Triplet, UpperGarment, WorldConfig, check_frames, product_image, render_frames, render_swap,
                    sample_background, sample_lower_garment, sample_motion, sample_person, sample_triplet,
                    sample_upper_garment, split_of_seed)

__all__ = [
    "DataError", "FolderDataset", "WorldDataset", "read_image", "read_video", "write_video",
    "KEYPOINT_NAMES", "LABELS", "LOWER_TYPES", "MOTION_PROMPTS", "MOTIONS", "PATTERNS", "SPLIT_SEEDS", "TEST_SEEDS",
    "TRAIN_SEEDS", "UPPER_TYPES", "VAL_SEEDS", "Background", "LowerGarment", "MannequinWorld", "Motion", "Person",
    "Triplet", "UpperGarment", "WorldConfig", "check_frames", "product_image", "render_frames", "render_swap",
    "sample_background", "sample_lower_garment", "sample_motion", "sample_person", "sample_triplet",
    "sample_upper_garment", "split_of_seed",
]
