"""Which process this is, and the module inside a parallel wrapper.

The one place the project asks for its rank or unwraps a module; use these
rather than reading ``RANK`` or ``.module`` by hand.
"""

import os

import torch
from torch import nn


def rank_and_world_size():
    """This process's rank and the number of processes.

    Before ``torch.distributed`` is initialised (e.g. while the YAML is
    loaded), torchrun's ``RANK`` and ``WORLD_SIZE`` are read instead.

    Returns
    -------
    tuple of int
        ``(rank, world_size)``; ``(0, 1)`` for a single process.

    Example
    -------
    >>> rank_and_world_size()
    (0, 1)
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return (
        int(os.environ.get("RANK") or 0),
        int(os.environ.get("WORLD_SIZE") or 1),
    )


def unwrap_module(module):
    """The module inside DDP / DataParallel / ``torch.compile`` wrappers.

    Arguments
    ---------
    module : torch.nn.Module
        Possibly wrapped module.

    Returns
    -------
    torch.nn.Module
        The innermost wrapped module.

    Example
    -------
    >>> linear = nn.Linear(2, 2)
    >>> unwrap_module(nn.DataParallel(linear)) is linear
    True
    """
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        if isinstance(module, wrappers):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod  # torch.compile's OptimizedModule
        else:
            return module
