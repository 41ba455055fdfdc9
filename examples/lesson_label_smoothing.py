"""A hand-written PyTorch label-smoothing loss, checked by ``lsref.testing.check_loss_function``.

``LabelSmoothingLoss`` is the manual module of the label-smoothing lesson, as printed there:
per-row losses (no reduction), eps/K on every class. ``lesson_loss`` calls it the way
``check_loss_function`` calls a loss (``fn(logits, targets, **params)``, K from the logits);
``others_loss`` is the same module with eps/(K-1) on the wrong classes and 1 - eps on the
target, the other common form, which the torch convention does not describe.

    lsref conformance --callable lesson_label_smoothing:lesson_loss --convention torch \\
        --param reduction=none
    lsref conformance --callable lesson_label_smoothing:others_loss --convention torch \\
        --param reduction=none
"""
import torch.nn as nn


class LabelSmoothingLoss(nn.Module):
    def __init__(self, num_classes, smoothing=0.1):
        super().__init__()
        self.smoothing = smoothing
        self.num_classes = num_classes

    def forward(self, logits, targets):
        log_probs = nn.functional.log_softmax(logits, dim=-1)
        # Hard label contribution
        nll = -log_probs.gather(dim=-1, index=targets.unsqueeze(1)).squeeze(1)
        # Smoothing contribution
        smooth_loss = -log_probs.mean(dim=-1)
        return (1 - self.smoothing) * nll + self.smoothing * smooth_loss


def lesson_loss(logits, targets, label_smoothing=0.1):
    return LabelSmoothingLoss(logits.shape[-1], label_smoothing)(logits, targets)


def others_loss(logits, targets, label_smoothing=0.1):
    """eps/(K-1) on each wrong class, 1 - eps on the target."""
    K = logits.shape[-1]
    log_probs = nn.functional.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(dim=-1, index=targets.unsqueeze(1)).squeeze(1)
    others = -log_probs.sum(dim=-1) - nll
    return (1 - label_smoothing) * nll + label_smoothing / (K - 1) * others
