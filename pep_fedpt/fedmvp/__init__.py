"""FedMVP's client side in torch: frozen open_clip CLIP, attribute text, PromptFormer, local
training. No Flower here: the app and the strategy build on this package."""

from __future__ import annotations

from pep_fedpt.fedmvp.attributes import load_attributes, sentences
from pep_fedpt.fedmvp.clip import ClipBundle, build_clip
from pep_fedpt.fedmvp.model import FedMVPModel
from pep_fedpt.fedmvp.promptformer import PromptFormer
from pep_fedpt.fedmvp.text_bank import TextBank, build_text_bank
from pep_fedpt.fedmvp.train import (
    FedMVPEval,
    FedMVPTrainResult,
    evaluate_local,
    flipped_features,
    train_local,
)

__all__ = [
    "ClipBundle",
    "FedMVPEval",
    "FedMVPModel",
    "FedMVPTrainResult",
    "PromptFormer",
    "TextBank",
    "build_clip",
    "build_text_bank",
    "evaluate_local",
    "flipped_features",
    "load_attributes",
    "sentences",
    "train_local",
]
