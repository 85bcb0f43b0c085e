"""dormant: is a backdoor removed by a defense gone, or only dormant?"""

__version__ = "0.1.0"

from . import archs as _archs  # noqa: E402,F401  (registers the transfer surrogates vgg19_bn, resnet18, wrn28_2)
