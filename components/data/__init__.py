"""Data: formats under data/ (npz, image folder, the built-in digits), the manifest, validation,
the shared ImageDataset and its split, and lineage (DVC hash, git commit)."""
from components.data.dataset import ImageDataset, stratified_split
from components.data.manifest import load_manifest, save_manifest
from components.data.sources import (build_manifest, check_data_config, data_format, declared_classes, load_dataset,
                                     load_images, validate)

__all__ = ["ImageDataset", "build_manifest", "check_data_config", "data_format", "declared_classes", "load_dataset",
           "load_images", "load_manifest", "save_manifest", "stratified_split", "validate"]
