"""torchvision for the model layer and its data, which need it throughout: imported first by
``ssanet.model`` and ``ssanet.data``, so that a missing torchvision, or one that is not the
build made for the installed torch, is reported in one line naming the fix (issue 23).
``import ssanet`` itself does not need it: the ``ssanet`` command answers ``--help`` and
``--version`` without it."""

from ssanet_ops._torchvision import import_torchvision

torchvision = import_torchvision("ssanet (the model layer, its data and commands)", "train")
