"""LPIPS: learned perceptual distance between the reference and the regenerated image (lower is closer).

The `lpips` package ships its calibrated linear heads; the backbone (AlexNet by default) comes from
torchvision's ImageNet weights, which must be in torch's cache when nothing can be downloaded. The tiny
build keeps the real heads on a randomly initialised SqueezeNet backbone.
"""

from __future__ import annotations

import threading
from pathlib import Path

import torch
from PIL import Image
from torchvision.transforms.functional import pil_to_tensor

from arpo.eval.metrics.scores import MetricScore
from arpo.tools.devices import pick_device
from arpo.tools.hub import load_or_fail

DEFAULT_NET = "alex"
IMAGE_SIDE = 256
"""Both images are resized to this square before comparison, so references of any size can be scored."""
_TINY_SIDE = 64
_BACKBONE_WEIGHTS = {"alex": "AlexNet_Weights", "vgg": "VGG16_Weights", "squeeze": "SqueezeNet1_1_Weights"}


class LpipsDistance:
    """LPIPS between two images, computed by one `lpips.LPIPS` network."""

    def __init__(self, network: torch.nn.Module, *, name: str, side: int = IMAGE_SIDE) -> None:
        self.network = network.eval()
        self.name = name
        self.side = side
        self._lock = threading.Lock()

    def distance(self, reference: Image.Image, generated: Image.Image) -> MetricScore:
        """LPIPS distance; 0 for identical images."""
        batch = torch.stack([self._as_tensor(reference), self._as_tensor(generated)])
        device = next(self.network.parameters()).device
        batch = batch.to(device)
        with self._lock, torch.inference_mode():
            value = float(self.network(batch[:1], batch[1:]).flatten()[0])
        return MetricScore("lpips", max(0.0, value), self.name)

    def _as_tensor(self, image: Image.Image) -> torch.Tensor:
        resized = image.convert("RGB").resize((self.side, self.side), Image.Resampling.BICUBIC)
        return pil_to_tensor(resized).float() / 127.5 - 1.0  # lpips reads pixels in [-1, 1]

    @classmethod
    def from_pretrained(cls, net: str = DEFAULT_NET, device: str | None = None) -> "LpipsDistance":
        """LPIPS with a pretrained torchvision backbone ("alex", "vgg" or "squeeze")."""
        import lpips

        name = f"lpips-{net}"

        def load(local_files_only: bool) -> torch.nn.Module:
            cached = _backbone_checkpoint(net)
            if local_files_only and not cached.is_file():
                raise FileNotFoundError(f"torchvision weights not cached at {cached}")
            return lpips.LPIPS(net=net, pretrained=True, pnet_rand=False, verbose=False)

        network = load_or_fail(name, load)
        return cls(network.to(pick_device(device)), name=name)

    @classmethod
    def tiny(cls, seed: int = 0) -> "LpipsDistance":
        """The real LPIPS heads on a random SqueezeNet, comparing 64-pixel images."""
        import lpips

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = lpips.LPIPS(net="squeeze", pretrained=True, pnet_rand=True, verbose=False)
        return cls(network, name=f"tiny-lpips-squeeze-seed{seed}", side=_TINY_SIDE)


def _backbone_checkpoint(net: str) -> Path:
    """Where torchvision keeps the backbone's ImageNet weights once downloaded."""
    import torchvision.models as models

    weights = getattr(models, _BACKBONE_WEIGHTS[net]).IMAGENET1K_V1
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
