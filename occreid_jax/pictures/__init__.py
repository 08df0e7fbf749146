"""Pictures of what a model does: ranked lists (`visrank.py`, `rank_pictures.py`) and MAT's
keypoints and part segmentation (`visualize.py`)."""
