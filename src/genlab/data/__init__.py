"""Data sets (MNIST, Fashion-MNIST, the embedded mnist-5k), the IDX reader and downloads from public mirrors."""

from genlab.data.datasets import (
    DATASETS,
    Dataset,
    cache_dir,
    clear_cache,
    describe_datasets,
    how_to_get,
    check_run_shape,
    load_dataset,
    resolve_data_dir,
    resolve_dataset_name,
    run_dataset,
)
from genlab.data.files import image_shape
from genlab.data.idx import DataError, idx_shape, read_idx

__all__ = [
    "DATASETS", "Dataset", "DataError", "cache_dir", "clear_cache", "describe_datasets", "how_to_get", "idx_shape",
    "load_dataset", "read_idx", "resolve_data_dir", "resolve_dataset_name",
    "run_dataset", "check_run_shape", "image_shape",
]
