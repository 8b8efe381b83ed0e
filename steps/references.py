"""Step: the real splits' features for FID/KID - once per dataset version and feature extractor
(ZenML's cache: same dataset, feature net and extractor settings -> the stored artifact)."""
from typing import Annotated

from zenml import step

from components.config import ExtractorConfig
from components.data import ImageDataset
from components.metrics import FeatureNet, ReferenceFeatures
from components.metrics.evaluate import extractor_for, reference_features
from components.training import pin_threads
from steps.materializers import ReferenceFeaturesMaterializer
from steps.names import REFERENCE_FEATURES


@step(output_materializers=ReferenceFeaturesMaterializer)
def reference_statistics(dataset: ImageDataset, feature_net: FeatureNet,
                         extractor: ExtractorConfig,
                         threads: int = 0) -> Annotated[ReferenceFeatures, REFERENCE_FEATURES]:
    """`extractor`: only the evaluation keys that change the features (feature_net, inception_dir)."""
    pin_threads(threads)                 # compute.threads (0: as it is)
    return reference_features(extractor_for(extractor, feature_net), dataset)
