"""Torch7 serialization (torch7's File.lua, Tensor/Storage readers and writers) and nn/cudnn model conversion."""

from t7.read import LuaFunction, Storage, T7Error, TableKey, TorchObject, equal, load
from t7.write import save
from t7.convert import find, load_model, save_model, to_lua

__all__ = ['LuaFunction', 'Storage', 'T7Error', 'TableKey', 'TorchObject', 'equal', 'find', 'load', 'load_model',
           'save', 'save_model', 'to_lua']
