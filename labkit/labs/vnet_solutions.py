# generated from notebooks/01_vnet_prostate.ipynb by `make export`; edit the notebook, not this file.
# ruff: noqa: W291, W293
"""The exercise solutions of notebooks/01_vnet_prostate.ipynb, shown by ``ex.<name>.solution()``.

``SOLUTIONS[number] = (title, source)``, numbered as in the student notebooks.
"""

SOLUTIONS = {}


SOLUTIONS[1] = 'Dice loss', '''\
def dice_loss(prob, label, squared=True, eps=1e-5):
    """1 - soft Dice, per case, averaged over the batch.

    Args:
        prob: predicted probabilities, shape (batch, channels, x, y, z), values in [0, 1].
        label: the truth, same shape, 0 or 1.
        squared: V-Net's denominator sum(p^2) + sum(g^2); False: sum(p) + sum(g).
        eps: keeps 0 / 0 defined when prediction and label are both empty.

    Returns:
        A scalar tensor: 0 for a perfect prediction, up to 1 for no overlap.
    """
    dims = tuple(range(1, prob.ndim))  # every axis but the batch axis
    overlap = (prob * label).sum(dims)
    if squared:
        total = (prob * prob).sum(dims) + (label * label).sum(dims)
    else:
        total = prob.sum(dims) + label.sum(dims)
    dice = (2 * overlap + eps) / (total + eps)
    return (1 - dice).mean()
'''

SOLUTIONS[2] = 'residual block', '''\
def forward(self, x):
    return self.activation(self.stages(x) + self.skip(x))
'''

SOLUTIONS[3] = 'gradient accumulation', '''\
def train_one_epoch(net, batches, optimizer, loss_fn, device, accumulate=1, scaler=None,
                    mixed_precision=False, channels_last=False):
    """One pass over ``batches``, stepping the optimiser every ``accumulate`` batches.

    Returns:
        {"loss": mean training loss, "dice": mean hard Dice of the training cases}.
    """
    device = torch.device(device)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    net.train()
    optimizer.zero_grad(set_to_none=True)
    losses, dices = [], []
    for index, batch in enumerate(progress(batches, desc="train")):
        image, label = to_tensors(batch, device, channels_last)
        with torch_utils.autocast(device, mixed_precision):
            logits = net(image)
        prob = torch.sigmoid(logits.float())  # the loss in float32, also under autocast
        loss = loss_fn(prob, label) / accumulate
        scaler.scale(loss).backward()
        if (index + 1) % accumulate == 0 or index + 1 == len(batches):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        # a NaN / Inf loss stops here, before the epoch's checkpoint is written
        losses.append(torch_utils.check_loss(loss.item() * accumulate, step=index))
        dices.extend(dice_score(prob.detach(), label).tolist())
    return {"loss": float(np.mean(losses)), "dice": float(np.mean(dices))}
'''
