# generated from notebooks/01_vnet_prostate.ipynb by `make export`; edit the notebook, not this file.
# ruff: noqa: W291, W293
"""The exercise solutions of notebooks/01_vnet_prostate.ipynb, shown by ``ex.<name>.solution()``.

``SOLUTIONS[number] = (title, source)``, numbered as in the student notebooks.
"""

SOLUTIONS = {}


SOLUTIONS[1] = 'random flip', '''\
def __call__(self, case, rng):
    flip = rng.random() < self.probability  # one decision for the whole case
    case = dict(case)  # a new dict: the case we were given stays as it was
    if flip:
        for key in self.keys:
            case[key] = np.flip(case[key], axis=self.axis + 1).copy()
    return case
'''

SOLUTIONS[2] = 'Dice loss', '''\
def dice_loss(prob, label, squared=True, eps=1e-5):
    """1 - soft Dice, per case, averaged over the batch.

    Args:
        prob: predicted probabilities, shape (batch, channels, x, y, z), values in [0, 1].
        label: the truth, same shape, 0 or 1.
        squared: V-Net's denominator sum(p^2) + sum(g^2); False: sum(p) + sum(g).
        eps: in the numerator and the denominator: two empty masks give Dice 1, loss 0.

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

SOLUTIONS[3] = 'Dice score', '''\
def dice_score(prob, label, threshold=0.5):
    """Hard Dice per case, shape (batch,): prob > threshold against label (both empty: 1)."""
    pred = (prob > threshold).float()
    dims = tuple(range(1, pred.ndim))
    overlap = (pred * label).sum(dims)
    total = pred.sum(dims) + label.sum(dims)
    return torch.where(total > 0, 2 * overlap / total.clamp_min(1), torch.ones_like(total))
'''

SOLUTIONS[4] = 'residual block', '''\
def __init__(self, n_stages, in_channels, out_channels, normalization="groupnorm"):
    super().__init__()
    layers = []
    for stage in range(n_stages):
        layers.append(nn.Conv3d(in_channels if stage == 0 else out_channels, out_channels,
                                kernel_size=3, padding=1))
        layers.append(make_norm(normalization, out_channels))
        if stage < n_stages - 1:
            layers.append(nn.ReLU(inplace=True))
    self.stages = nn.Sequential(*layers)
    if in_channels == out_channels:
        self.skip = nn.Identity()
    else:  # a 1x1x1 convolution gives the input the right number of channels
        self.skip = nn.Sequential(nn.Conv3d(in_channels, out_channels, kernel_size=1),
                                  make_norm(normalization, out_channels))
    self.activation = nn.ReLU(inplace=True)

def forward(self, x):
    return self.activation(self.stages(x) + self.skip(x))
'''

SOLUTIONS[5] = 'V-Net forward pass', '''\
def forward(self, x):
    if any(side % self.size_multiple for side in x.shape[2:]):
        raise ValueError(f"input of spatial size {tuple(x.shape[2:])}: each side must be a "
                         f"multiple of {self.size_multiple}; pad or crop the volume")
    kept = []
    for block, down in zip(self.encoder, self.down, strict=True):
        x = block(x)
        kept.append(x)  # this level's features, for the way up
        x = down(x)
    x = self.bottom(x)
    for up, block in zip(self.up, self.decoder, strict=True):
        x = up(x) + kept.pop()  # the deepest kept features first; summation, not concatenation
        x = block(x)
    return self.head(x)
'''

SOLUTIONS[6] = 'gradient accumulation', '''\
def train_one_epoch(net, batches, optimizer, loss_fn, device, accumulate=1, scaler=None,
                    mixed_precision=False, channels_last=False):
    """One pass over ``batches``, one optimiser step per group of ``accumulate`` batches.

    Returns:
        {"loss": mean of the batches' losses, "dice": mean hard Dice of the training cases}.
    """
    device = torch.device(device)
    scaler = scaler or torch.amp.GradScaler(device.type, enabled=False)
    net.train()  # every epoch: evaluate() below switches to eval mode
    optimizer.zero_grad(set_to_none=True)
    losses, dices = [], []
    for index, batch in enumerate(progress(batches, desc="train")):
        image, label = to_tensors(batch, device, channels_last)
        with torch_utils.autocast(device, mixed_precision):
            logits = net(image)
        prob = torch.sigmoid(logits.float())  # the loss in float32, also under autocast
        loss = loss_fn(prob, label)
        group = min(accumulate, len(batches) - index // accumulate * accumulate)  # the last may be short
        scaler.scale(loss / group).backward()
        if (index + 1) % accumulate == 0 or index + 1 == len(batches):
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
        # a NaN / Inf loss stops here, before the epoch's checkpoint is written
        losses.append(torch_utils.check_loss(loss.item(), step=index))
        dices.extend(dice_score(prob.detach(), label).tolist())
    return {"loss": float(np.mean(losses)), "dice": float(np.mean(dices))}
'''

SOLUTIONS[7] = 'threshold on validation', '''\
def choose_threshold(probs, labels, thresholds):
    """The threshold with the highest mean Dice over the cases, and the mean Dice at each one."""
    scores = [float(np.mean([metrics.dice(prob > threshold, label)
                             for prob, label in zip(probs, labels, strict=True)]))
              for threshold in thresholds]
    return thresholds[int(np.argmax(scores))], scores
'''
