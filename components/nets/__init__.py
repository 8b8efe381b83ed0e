"""Network builders."""
from components.nets.unet import build_unet

__all__ = ["build_unet"]
