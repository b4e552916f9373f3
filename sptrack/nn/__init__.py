"""Networks written for sptrack (no torchvision/timm): ViT, I-JEPA predictor, small CNN, heads."""

from sptrack.nn.cnn import SmallCNN
from sptrack.nn.heads import MLP, DINOHead
from sptrack.nn.pos_embed import resample_table, sincos_2d
from sptrack.nn.predictor import ViTPredictor
from sptrack.nn.transformer import Attention, Block, DropPath
from sptrack.nn.vit import ViT

__all__ = ["MLP", "Attention", "Block", "DINOHead", "DropPath", "SmallCNN", "ViT", "ViTPredictor", "resample_table", "sincos_2d"]
