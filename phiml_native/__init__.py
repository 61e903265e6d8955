"""The PhiML-native data pipeline: PhiFlow fields -> PhiML tensors with named dims (`time, x, y, vector`) ->
`phiml.math.save` `.npz` cache -> `PhiMLDataset.iterate_batches` -> `phiml.nn.update_weights`, no conversion layer."""
from .data_manager import PhiMLDataManager
from .dataset import PhiMLDataset, create_phiml
from .npz import read_phiml_npz
from .pipeline import NativePipeline, PhiMLSyntheticTrainer

__all__ = ['PhiMLDataManager', 'PhiMLDataset', 'PhiMLSyntheticTrainer', 'create_phiml',
           'read_phiml_npz', 'NativePipeline']
