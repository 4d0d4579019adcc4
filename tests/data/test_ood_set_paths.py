"""OOD sets that read files (gmlab.ood.run.load_set) take the in-distribution data's root
and cache folder, so a read-only data folder is decoded once, into the given cache."""

import numpy as np
from hydra import compose, initialize_config_dir
from support.compose import CONF

from gmlab.models.gaussian import DiagonalGaussian
from gmlab.ood.run import load_set


def test_a_transformed_mnist_set_reads_the_given_root_and_caches_in_the_given_folder(
    tmp_path, files
):
    written = files.write_mnist(tmp_path / "data", n_train=5010, n_test=5)  # val_size 5000
    cache = tmp_path / "cache"
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("eval", overrides=["ckpt_path=unused", "ood=mnist_hflip"])
    model = DiagonalGaussian(data_shape=(1, 28, 28))
    paths = {"root": str(tmp_path / "data"), "cache_dir": str(cache)}
    x = load_set("mnist_hflip", cfg.ood.sets.mnist_hflip, model, "test", paths)
    np.testing.assert_array_equal(x.numpy(), written["test"][0][..., ::-1])  # flipped left-right
    assert any(cache.iterdir())  # decoded into the cache folder
    assert not list((tmp_path / "data" / "MNIST" / "raw").glob("gmlab_cache*"))  # not beside
