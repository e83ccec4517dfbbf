"""Data sets, partitions and client splits."""

# Importing a loader module registers its data sets.
from pep_fedpt.data import builtin as _builtin  # noqa: F401
from pep_fedpt.data import coop as _coop  # noqa: F401
from pep_fedpt.data import domainbed as _domainbed  # noqa: F401
from pep_fedpt.data import domainnet as _domainnet  # noqa: F401
from pep_fedpt.data import idx as _idx  # noqa: F401
from pep_fedpt.data import tinyimagenet as _tinyimagenet  # noqa: F401
from pep_fedpt.data import torchvision_sets as _torchvision_sets  # noqa: F401
from pep_fedpt.data.client_data import CentralData, ClientData, load_central_data, load_client_data
from pep_fedpt.data.partition import class_counts, partition_indices, stratified_split
from pep_fedpt.data.registry import (
    DatasetNotFoundError,
    DatasetSplits,
    ImageSpec,
    LabeledDataset,
    TensorImages,
    dataset_names,
    load_dataset,
    register_dataset,
)

__all__ = [
    "CentralData",
    "ClientData",
    "DatasetNotFoundError",
    "DatasetSplits",
    "ImageSpec",
    "LabeledDataset",
    "TensorImages",
    "class_counts",
    "dataset_names",
    "load_central_data",
    "load_client_data",
    "load_dataset",
    "partition_indices",
    "register_dataset",
    "stratified_split",
]
