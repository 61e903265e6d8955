"""The legacy data pipeline, kept as such code is written: PhiFlow fields -> torch `[C, T, H, W]` tensors ->
`torch.save` `.pt` cache -> `TensorDataset` of sliding windows -> `DataLoader` -> `torch_to_phiml` -> PhiML model."""
from .convert import phiml_to_torch, torch_to_phiml
from .data_manager import DataManager
from .dataset import build_window_dataset
from .pipeline import LegacyPipeline
from .trainer import SyntheticTrainer

__all__ = ['DataManager', 'build_window_dataset', 'torch_to_phiml', 'phiml_to_torch', 'SyntheticTrainer', 'LegacyPipeline']
