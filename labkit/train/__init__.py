"""Training beyond one GPU: the labs' own model and training code on several devices.

==========================================================  ==================================
command                                                     what
==========================================================  ==================================
``torchrun --nproc_per_node=N -m labkit.train vnet ...``    Lab 1 on N GPUs, DistributedDataParallel
``python -m labkit.train vnet ...``                         Lab 1 as one process (one GPU or the CPU)
``python -m labkit.train cfcm --strategy mirrored ...``     Lab 2 on every GPU of this machine
``python -m labkit.train cfcm --strategy multiworker ...``   Lab 2 on several machines (``TF_CONFIG``)
==========================================================  ==================================

The network, the loss and the training step come from ``labkit.labs.vnet`` and
``labkit.labs.cfcm``, which ``make export`` writes from the notebooks' cells tagged
``export``: there is no second copy of the lab code here, only the plumbing around it
(process groups, strategies, sharded data, rank-0 logging, checkpoints, ``metrics.json``).

Importing this package imports neither framework; ``python -m labkit.train vnet`` imports
only PyTorch and ``python -m labkit.train cfcm`` only TensorFlow.
"""

LABS = ("vnet", "cfcm")

__all__ = ["LABS"]
