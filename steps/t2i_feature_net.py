"""Step: the dataset feature net of the text-to-image route (FID features; the class a generated image shows)."""
from typing import Annotated

from zenml import step

from components.metrics import FeatureNet
from components.t2i.captions import CaptionDataset
from components.t2i.config import T2IEvalConfig
from components.t2i.evaluate import feature_net_for
from components.training import pin_threads
from steps.materializers import FeatureNetMaterializer
from steps.metadata import log_step_metadata
from steps.names import T2I_FEATURE_NET


@step(output_materializers={T2I_FEATURE_NET: FeatureNetMaterializer})
def t2i_feature_net(dataset: CaptionDataset, evaluation: T2IEvalConfig, threads: int = 0) -> Annotated[
        FeatureNet, T2I_FEATURE_NET]:
    pin_threads(threads)
    net, report = feature_net_for(dataset, evaluation.feature_steps)
    log_step_metadata(report)
    return net
