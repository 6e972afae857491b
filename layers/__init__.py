"""The project's layers: Torch7 nn modules PyTorch lacks, the LCNN lookup layer and clcNet's channel interlace."""
from layers.legacy import lua_type, named
from layers.PooledSpatialConvolution import PooledSpatialConvolution
from layers.ChannelInterlace import ChannelInterlace

__all__ = ['lua_type', 'named', 'PooledSpatialConvolution', 'ChannelInterlace']
