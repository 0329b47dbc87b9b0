"""The operator's container image, built without a container engine or a registry:
``make image`` (``python -m image``). See ``build.py``."""
