"""What the system knows and can prove: the catalog, manifests, markers, audit, events and keys."""
