"""The optimizer step of fine-tuning: a batch of patches, the masked loss, the update."""

from __future__ import annotations

import torch

from napari_unet_tuner.config import TrainingConfig
from napari_unet_tuner.inference.device import training_autocast
from napari_unet_tuner.model.unet import UNet, memory_format
from napari_unet_tuner.training.losses import masked_loss
from napari_unet_tuner.training.patches import PatchSampler


class Optimizing:
    """Train ``model`` in place, one step per call, on batches from ``sampler``.

    The encoder's first ``config.freeze_encoder_levels`` levels stay fixed;
    batch norm keeps its statistics when ``freeze_batch_norm`` (a few small
    patches would spoil them). On CPUs the model runs channels-last, and in
    bfloat16 autocast with ``config.mixed_precision``.
    """

    def __init__(
        self,
        model: UNet,
        sampler: PatchSampler,
        config: TrainingConfig,
        device: torch.device,
        batch_size: int,
        freeze_batch_norm: bool,
    ) -> None:
        for block in list(model.down)[: config.freeze_encoder_levels]:
            block.requires_grad_(False)
        # Channels-last (NHWC, or NDHWC for a 3D model) on CPUs, where oneDNN's
        # convolutions run fastest in it.
        self.layout = memory_format(model.config.spatial_dims) if device.type == "cpu" else None
        if self.layout is not None:
            model.to(memory_format=self.layout)
        self.model = model
        self.sampler = sampler
        self.config = config
        self.device = device
        self.batch_size = batch_size
        self.freeze_batch_norm = freeze_batch_norm
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.learning_rate)
        # The starting weights, for `TrainingConfig.parent_pull` (L2-SP).
        self._anchor = [(p, p.detach().clone()) for p in params] if config.parent_pull > 0 else []
        self._anchor_size = sum(p.numel() for p in params)
        self.steps = 0
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=config.mixed_precision and device.type == "cuda"
        )

    def train_mode(self) -> None:
        """Put the model back in training mode (after a validation)."""
        self.model.train()
        if self.freeze_batch_norm:
            for m in self.model.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def step(self, learning_rate: float) -> float:
        """Take one optimizer step at ``learning_rate``; return the batch's loss."""
        config = self.config
        images, targets = self.sampler.batch(self.batch_size)
        x = torch.from_numpy(images).to(self.device)
        if self.layout is not None:
            x = x.contiguous(memory_format=self.layout)
        y = torch.from_numpy(targets).to(self.device)
        classes = y[:, 0] if y.shape[1] == 2 else y[:, :-1]
        with training_autocast(self.device, config.mixed_precision):
            logits = self.model(x)
        loss = masked_loss(
            logits,
            classes,
            config.boundary_weight,
            config.contact_weight,
            emphasis=y[:, -1],
            correction_weight=config.correction_weight,
            unreviewed_weight=config.unreviewed_weight,
        )
        if self._anchor:
            drift = sum(((p - start) ** 2).sum() for p, start in self._anchor)
            loss = loss + config.parent_pull * drift / self._anchor_size
        self.steps += 1
        if config.warmup_steps:
            # Adam's first updates move every weight by about the step size,
            # whatever its gradient: ramped up, a fine-tuned model starts gently.
            learning_rate *= min(1.0, self.steps / config.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return float(loss.detach())
