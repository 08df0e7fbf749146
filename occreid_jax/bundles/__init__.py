"""Inference bundles: writing and loading them (`export.py`), the portable formats
(`export_formats.py`: StableHLO, SavedModel), a bundle's pose net (`bundle_pose.py`) and
embedding and ranking image files with a bundle (`gallery_search.py`)."""
