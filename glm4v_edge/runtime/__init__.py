"""Every variant of the model behind one interface (``variant.py``), loaded by name (``registry.py``)."""
