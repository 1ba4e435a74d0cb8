"""Import names that other projects' code expects, mapped onto petrel.

`petrel_client/` here is installed as the top-level package `petrel_client`
(pyproject.toml `package-dir`), so `from petrel_client.client import Client` (mmengine's
PetrelBackend, mmcv, user code written for SenseTime's SDK) gets `petrel.Client`. The
folder lives under petrel/ because the repository's top level is fixed.
"""
