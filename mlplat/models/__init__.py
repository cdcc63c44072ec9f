"""Model zoo (torch modules built from config), user models by import path, model bundles."""

from mlplat.models.bundle import BUNDLE_FILE, WEIGHTS_FILE, LoadedBundle, load_bundle, save_bundle
from mlplat.models.packed import PackedRef, read_member, write_pack
from mlplat.models.placement import choose_placement
from mlplat.models.zoo import TASK_TYPES, ModelSpec, build_model, loss_fn, predict_outputs

__all__ = [
    "ModelSpec",
    "TASK_TYPES",
    "build_model",
    "loss_fn",
    "predict_outputs",
    "save_bundle",
    "load_bundle",
    "LoadedBundle",
    "BUNDLE_FILE",
    "WEIGHTS_FILE",
    "PackedRef",
    "write_pack",
    "read_member",
    "choose_placement",
]
