"""farm: a distributed render farm for seeded text-to-video generation (Wan2.2).

Producer modules (``spec``, ``seeds``, ``manifest``, ``ledger``, ``cli``) never import torch or
diffusers; the render engine (``farm.engine``) does.
"""

__version__ = "0.1.0"
