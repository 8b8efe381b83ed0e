"""Data: sources (built-in digits, image folder), the shared ImageDataset and its split."""
from components.data.dataset import ImageDataset, stratified_split
from components.data.sources import SOURCES, load_dataset

__all__ = ["ImageDataset", "SOURCES", "load_dataset", "stratified_split"]
