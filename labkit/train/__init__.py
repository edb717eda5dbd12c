"""Training beyond one GPU: the notebooks' own lab code on several devices.

``torchrun --nproc_per_node=N -m labkit.train vnet ...`` (DistributedDataParallel) and
``python -m labkit.train cfcm --strategy mirrored|multiworker ...`` (``tf.distribute``). The
networks, losses, steps and loops come from ``labkit.labs`` (the notebooks' cells tagged
``export``); run folders are :class:`labkit.runs.Run`'s. This package holds only what is about
several devices. Importing it imports neither framework.
"""
