"""Data: sources (built-in digits, image folder), the shared ImageDataset and its split."""
from components.data.dataset import ImageDataset, stratified_split
from components.data.sources import SOURCES, check_data_config, load_dataset

__all__ = ["ImageDataset", "SOURCES", "check_data_config", "load_dataset", "stratified_split"]
