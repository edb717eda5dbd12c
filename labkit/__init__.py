"""labkit: the plumbing behind the segmentation labs.

Data readers and transforms, batch iterators, viewers, live training plots, metrics and
exercise checks. The ideas being taught (networks, losses, training steps) live in the
notebooks. Importing ``labkit`` imports neither PyTorch nor TensorFlow: each lab kernel
pulls in only its own framework, through ``labkit.torch_utils`` or ``labkit.tf_utils``.
"""

from labkit.paths import data_root, runs_root
from labkit.profiles import Profile, get_profile

__all__ = ["Profile", "get_profile", "data_root", "runs_root", "__version__"]
__version__ = "0.1.0"
