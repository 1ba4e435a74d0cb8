"""`petrel_client`: SenseTime's SDK package name, served by petrel (petrel/client.py).

Only `petrel_client.client.Client` is provided; importing this package loads nothing
else, as `from petrel_client import client` is how mmengine imports it.
"""
