"""Step: train the dataset feature net used for FID and class accuracy (train split only)."""
from typing import Annotated

from zenml import step

from components.config import FeatureNetConfig
from components.data import ImageDataset
from components.metrics import FeatureNet, train_feature_net
from components.training import pin_threads
from steps.materializers import FeatureNetMaterializer
from steps.metadata import log_step_metadata
from steps.names import FEATURE_NET


@step(output_materializers=FeatureNetMaterializer)
def feature_net_step(dataset: ImageDataset, features: FeatureNetConfig,
                     threads: int = 0) -> Annotated[FeatureNet, FEATURE_NET]:
    pin_threads(threads)                 # compute.threads (0: as it is)
    net, info = train_feature_net(features, dataset)
    log_step_metadata({"feature_net": net.name, **info})
    return net
