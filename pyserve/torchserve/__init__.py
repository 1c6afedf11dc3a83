"""TorchServe compatibility: `.mar` archives, handlers and TorchServe's REST APIs.

A TorchServe user points `pyserve torchserve` at the model store and the config.properties they
already have. Archives are read here (archive.py, config.py), handlers run in-process on the
instances of pyserve's core scheduler (pyserve.backends.torchserve, context.py), and TorchServe's
inference, management and metrics APIs are served by api.py; store.py keeps the registered
models and their versions, server.py starts and stops it all.
"""
