"""The project's FID and KID are clean-fid's: same numbers on the same image folders with the
same feature extractor; Inception weights missing offline is a clear error."""
import numpy as np
import pytest
import torch
from PIL import Image

from components.config import ConfigError, FeatureNetConfig
from components.params import load_params
from components.metrics import kid, train_feature_net
from components.metrics.evaluate import fid_between_folders
from components.metrics.extractors import INCEPTION_FILE, DatasetFeatures, extract, inception_weights, to_uint8_rgb


@pytest.fixture(scope="module")
def extractor(digits):
    net, _ = train_feature_net(FeatureNetConfig(dim=16, train_steps=40), digits, progress=False)
    return DatasetFeatures(net)


def _write_folder(folder, images):
    folder.mkdir()
    for i, img in enumerate(to_uint8_rgb(images)):
        Image.fromarray(img).save(folder / f"{i:05d}.png")


def test_fid_equals_clean_fid_compute_fid_on_two_folders(tmp_path, digits, extractor):
    from cleanfid import fid as cleanfid

    x_tr, _ = digits.split("train")
    x_ev, _ = digits.split("eval")
    noisy = (x_tr[:600] + 0.3 * torch.randn(x_tr[:600].shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    _write_folder(tmp_path / "a", noisy)
    _write_folder(tmp_path / "b", x_ev)
    ours = fid_between_folders(str(tmp_path / "a"), str(tmp_path / "b"), extractor)
    theirs = cleanfid.compute_fid(str(tmp_path / "a"), str(tmp_path / "b"), mode="clean",
                                  custom_feat_extractor=extractor, custom_fn_resize=lambda x: x.astype(np.float32),
                                  device=torch.device("cpu"), num_workers=0, batch_size=100, verbose=False)
    print(f"project FID {ours:.6f} vs clean-fid compute_fid {theirs:.6f}")
    assert ours > 1.0                                   # a real difference, not two empty sets
    assert abs(ours - float(theirs)) <= 1e-3


def test_kid_equals_clean_fid_when_the_subset_is_everything(digits, extractor):
    from cleanfid.fid import kernel_distance

    a = extract(extractor, digits.split("eval")[0])
    b = extract(extractor, digits.split("train")[0][:450])
    # subsets of all rows are permutations: both estimators are then deterministic
    assert kid(a, b, num_subsets=2) == pytest.approx(kernel_distance(a, b, num_subsets=2), rel=1e-9)
    assert kid(a, a, num_subsets=3) < kid(a, b, num_subsets=3)


def test_inception_weights_missing_offline_say_where_to_put_them(tmp_path):
    with pytest.raises(ConfigError, match=rf"{tmp_path}/{INCEPTION_FILE}.*place it there"):
        inception_weights(str(tmp_path), download=False)
    # before any step runs: the config names the field and the file
    with pytest.raises(ConfigError, match="evaluation.feature_net 'inception'"):
        load_params(None, evaluation={"feature_net": "inception", "inception_dir": str(tmp_path)})


def test_inception_extractor_resizes_like_clean_fid(tmp_path, monkeypatch):
    """With a stand-in TorchScript file (the real weights need a download): images reach the
    network as clean-fid's 299x299 bicubic resize of the uint8 image."""
    from components.metrics.extractors import InceptionFeatures

    class Stub(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                              torch.nn.Linear(3, 2048))

        def forward(self, x, return_features: bool = False):
            return self.layers(x)

    torch.jit.script(Stub()).save(str(tmp_path / INCEPTION_FILE))
    seen = []
    ex = InceptionFeatures(str(tmp_path))
    monkeypatch.setattr(ex, "model", lambda x: (seen.append(x), torch.zeros(len(x), 2048))[1])
    feats = extract(ex, torch.zeros(3, 1, 8, 8))
    assert feats.shape == (3, 2048) and seen[0].shape == (3, 3, 299, 299)
    assert float(seen[0].mean()) == pytest.approx(127.5, abs=0.6)      # 0.0 in [-1, 1] -> 127/128
