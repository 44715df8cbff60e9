"""gnc: the Python client of the gnc parameter server (Gradient Noise Convolution).

    import gnc
    with gnc.Client(["127.0.0.1:7070", "127.0.0.1:7071"], rank, num_workers,
                    [("w", (256, 784)), ("b", (256,))], local_batch_size=64) as client:
        ...

See gnc.client for the calls, gnc.torch for PyTorch models. The gRPC stubs (gnc.v1)
are generated from proto/gnc.proto when the package is built.
"""

from gnc.client import Client, JobInfo
from gnc.errors import GncError, LateGradient
from gnc.layout import Layout, ShardRange, TensorSpec, shard_range

__version__ = "0.1.0"

__all__ = ["Client", "GncError", "JobInfo", "LateGradient", "Layout", "ShardRange",
           "TensorSpec", "shard_range", "__version__"]
