"""Container images built without a container engine or a registry: ``archive.py``
writes the archives that containerd, Docker and Podman load."""
