"""Every transfer method, registered by name (``METHODS``) through one interface.

Each module in this package registers its methods on import; adding a method is adding a file.
"""
import importlib
import pkgutil

from tlgates.methods.base import (
    LAYER_GROUPS, METHODS, ORIGINS, PATHS, PRESETS, SUMMARY_COLUMNS, Classifier, Deviation, Frozen,
    MethodConfig, MethodSpec, Param, TransferModel, build_method, frozen_and_trainable,
    get_method, hyperparameter, register,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base":
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["LAYER_GROUPS", "METHODS", "ORIGINS", "PATHS", "PRESETS", "SUMMARY_COLUMNS",
           "Classifier", "Deviation", "Frozen", "MethodConfig", "MethodSpec", "Param",
           "TransferModel", "build_method", "frozen_and_trainable", "get_method",
           "hyperparameter", "register"]
