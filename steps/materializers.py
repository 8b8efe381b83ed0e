"""ZenML materializers: models and data as safetensors + JSON, never pickles."""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Type

import pandas as pd
from zenml.enums import ArtifactType, VisualizationType
from zenml.materializers.base_materializer import BaseMaterializer
from zenml.utils import io_utils

from components.data import ImageDataset, load_manifest, save_manifest
from components.data.validation import DataValidationReport
from components.diffusion.denoiser import (CTMDenoiser, Denoiser, EDMDenoiser, GuidedDenoiser, VPDenoiser,
                                           load_denoiser, save_denoiser, state_hash)
from components.diffusion.pairs import TeacherPairs, load_pairs, write_pairs
from components.diffusion.routed import RoutedDenoiser
from components.metrics.features import FeatureNet
from components.metrics.fid import FeatureSet, ReferenceFeatures
from components.t2i.captions import CaptionDataset
from components.t2i.parts import LatentCache, SDParts


class _FolderMaterializer(BaseMaterializer):
    """Write to a local temp folder, then copy it into the artifact store (any backend)."""

    SKIP_REGISTRATION = True

    def _write(self, data: Any, directory: str) -> None:
        raise NotImplementedError

    def _read(self, directory: str) -> Any:
        raise NotImplementedError

    def save(self, data: Any) -> None:
        with self.get_temporary_directory(delete_at_exit=True) as tmp:
            self._write(data, tmp)
            io_utils.copy_dir(tmp, self.uri, overwrite=True)

    def load(self, data_type: Type[Any]) -> Any:
        with self.get_temporary_directory(delete_at_exit=True) as tmp:
            io_utils.copy_dir(self.uri, tmp, overwrite=True)
            return self._read(tmp)


class DenoiserMaterializer(_FolderMaterializer):
    """A Denoiser as a diffusers folder: unet/ (safetensors), scheduler/, denoiser.json (a routed student: one per
    student + routing.json)."""

    ASSOCIATED_TYPES = (Denoiser, EDMDenoiser, VPDenoiser, CTMDenoiser, GuidedDenoiser, RoutedDenoiser)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.MODEL

    def _write(self, data: Denoiser, directory: str) -> None:
        save_denoiser(data, directory)

    def _read(self, directory: str) -> Denoiser:
        return load_denoiser(directory, what="artifact")

    def extract_metadata(self, data: Denoiser) -> Dict[str, Any]:
        return {"kind": data.kind, "num_classes": data.num_classes, "state_sha256": state_hash(data),
                "parameters": sum(p.numel() for p in data.parameters()),
                "sampler": data.sampling["sampler"], "nfe_steps": len(data.sampling["sigmas"]) - 1}


class TeacherPairsMaterializer(_FolderMaterializer):
    """Teacher noise -> image pairs: safetensors shards + pairs.json (components/diffusion/pairs.py)."""

    ASSOCIATED_TYPES = (TeacherPairs,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.DATA

    def _write(self, data: TeacherPairs, directory: str) -> None:
        write_pairs(data, directory)

    def _read(self, directory: str) -> TeacherPairs:
        return load_pairs(directory, what="artifact")

    def extract_metadata(self, data: TeacherPairs) -> Dict[str, Any]:
        return {"num_pairs": len(data), "teacher_sha256": data.teacher_sha256,
                "sampler": data.sampler["sampler"], "nfe_steps": len(data.sampler["sigmas"]) - 1}


class FeatureNetMaterializer(_FolderMaterializer):
    ASSOCIATED_TYPES = (FeatureNet,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.MODEL

    def _write(self, data: FeatureNet, directory: str) -> None:
        data.save_pretrained(directory)

    def _read(self, directory: str) -> FeatureNet:
        return FeatureNet.from_pretrained(directory)


class FeatureSetMaterializer(_FolderMaterializer):
    """Features of generated images (safetensors + JSON)."""

    ASSOCIATED_TYPES = (FeatureSet,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.DATA

    def _write(self, data: FeatureSet, directory: str) -> None:
        data.save(directory)
        with open(os.path.join(directory, "name.txt"), "w") as f:
            f.write(data.name)

    def _read(self, directory: str) -> FeatureSet:
        with open(os.path.join(directory, "name.txt")) as f:
            return FeatureSet.load(directory, f.read())

    def extract_metadata(self, data: FeatureSet) -> Dict[str, Any]:
        return {"feature_net": data.feature_net, "num_images": len(data.features), "dim": data.features.shape[1]}


class ReferenceFeaturesMaterializer(_FolderMaterializer):
    """The real splits' features: one artifact per dataset version and feature extractor."""

    ASSOCIATED_TYPES = (ReferenceFeatures,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.DATA

    def _write(self, data: ReferenceFeatures, directory: str) -> None:
        data.save(directory)

    def _read(self, directory: str) -> ReferenceFeatures:
        return ReferenceFeatures.load(directory)

    def extract_metadata(self, data: ReferenceFeatures) -> Dict[str, Any]:
        return {"feature_net": data.eval.feature_net, "num_eval": len(data.eval.features),
                "num_train": len(data.train.features), "dim": data.eval.features.shape[1]}


class ImageDatasetMaterializer(_FolderMaterializer):
    ASSOCIATED_TYPES = (ImageDataset,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.DATA

    def _write(self, data: ImageDataset, directory: str) -> None:
        data.save(directory)

    def _read(self, directory: str) -> ImageDataset:
        return ImageDataset.load(directory)

    def extract_metadata(self, data: ImageDataset) -> Dict[str, Any]:
        return {"fingerprint": data.fingerprint(), "num_images": len(data.images),
                "num_eval": int(data.is_eval.sum()), "shape": str(data.shape),
                "classes": ",".join(data.class_names), "source": data.source}


class ManifestMaterializer(_FolderMaterializer):
    """The manifest as typed CSV; the dashboard shows images per class and split."""

    ASSOCIATED_TYPES = (pd.DataFrame,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.DATA

    def _write(self, data: pd.DataFrame, directory: str) -> None:
        save_manifest(data, os.path.join(directory, "manifest.csv"))

    def _read(self, directory: str) -> pd.DataFrame:
        return load_manifest(os.path.join(directory, "manifest.csv"))

    def save_visualizations(self, data: pd.DataFrame) -> Dict[str, VisualizationType]:
        table = data.assign(unreadable=~data["readable"]).groupby(["class_name", "split"]).agg(
            images=("path", "size"), unreadable=("unreadable", "sum")).reset_index()
        uri = os.path.join(self.uri, "per_class.csv")
        with self.artifact_store.open(uri, "w") as f:
            table.to_csv(f, index=False)
        return {uri: VisualizationType.CSV}

    def extract_metadata(self, data: pd.DataFrame) -> Dict[str, Any]:
        return {"num_images": len(data), "num_eval": int((data["split"] == "eval").sum()),
                "num_unreadable": int((~data["readable"]).sum()), "classes": int(data["class_name"].nunique())}


class DataValidationMaterializer(BaseMaterializer):
    """The Great Expectations results as JSON, with an HTML page for the dashboard."""

    ASSOCIATED_TYPES = (DataValidationReport,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.DATA_ANALYSIS
    SKIP_REGISTRATION = True

    def save(self, data: DataValidationReport) -> None:
        with self.artifact_store.open(os.path.join(self.uri, "report.json"), "w") as f:
            json.dump(data.to_dict(), f, indent=1)

    def load(self, data_type: Type[Any]) -> DataValidationReport:
        with self.artifact_store.open(os.path.join(self.uri, "report.json"), "r") as f:
            return DataValidationReport.from_dict(json.load(f))

    def save_visualizations(self, data: DataValidationReport) -> Dict[str, VisualizationType]:
        uri = os.path.join(self.uri, "report.html")
        with self.artifact_store.open(uri, "w") as f:
            f.write(data.to_html())
        return {uri: VisualizationType.HTML}

    def extract_metadata(self, data: DataValidationReport) -> Dict[str, Any]:
        return {"success": data.success, "expectations": len(data.outcomes), "failed": len(data.failures())}


class CaptionDatasetMaterializer(_FolderMaterializer):
    """Images (safetensors) + captions.json."""

    ASSOCIATED_TYPES = (CaptionDataset,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.DATA

    def _write(self, data: CaptionDataset, directory: str) -> None:
        data.save(directory)

    def _read(self, directory: str) -> CaptionDataset:
        return CaptionDataset.load(directory)

    def extract_metadata(self, data: CaptionDataset) -> Dict[str, Any]:
        return {"fingerprint": data.fingerprint(), "num_images": len(data), "num_eval": int(data.is_eval.sum()),
                "prompts": len(data.prompts()), "shape": str(data.shape), "source": data.source}


class SDPartsMaterializer(_FolderMaterializer):
    """Stable Diffusion parts in the diffusers layout (a complete set: a stock pipeline folder)."""

    ASSOCIATED_TYPES = (SDParts,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.MODEL

    def _write(self, data: SDParts, directory: str) -> None:
        data.save(directory)

    def _read(self, directory: str) -> SDParts:
        return SDParts.load(directory)

    def extract_metadata(self, data: SDParts) -> Dict[str, Any]:
        return {"parts": ",".join(k for k in ("tokenizer", "text_encoder", "vae", "unet", "scheduler")
                                  if getattr(data, k) is not None)}


class LatentCacheMaterializer(_FolderMaterializer):
    """Latents + prompt embeddings (safetensors) + prompts (JSON)."""

    ASSOCIATED_TYPES = (LatentCache,)
    ASSOCIATED_ARTIFACT_TYPE = ArtifactType.DATA

    def _write(self, data: LatentCache, directory: str) -> None:
        data.save(directory)

    def _read(self, directory: str) -> LatentCache:
        return LatentCache.load(directory)

    def extract_metadata(self, data: LatentCache) -> Dict[str, Any]:
        return {**{k: str(v) for k, v in data.meta.items()}, "latent_shape": str(tuple(data.latents.shape[1:])),
                "prompts": len(data.prompts)}


__all__ = ["CaptionDatasetMaterializer", "DataValidationMaterializer", "LatentCacheMaterializer", "SDPartsMaterializer", "DenoiserMaterializer", "FeatureNetMaterializer", "FeatureSetMaterializer",
           "ImageDatasetMaterializer", "ManifestMaterializer", "ReferenceFeaturesMaterializer"]
