"""Training data: COCO datasets, the Clump Scout adapter, augmentation, splits.

Frames
------
Every record and every dataset item is in the **input frame**: the pixels of
the full model input (e.g. the 400x400 Clump Scout PNG), boxes
``(x1, y1, x2, y2)`` with pixel ``i`` spanning ``[i, i + 1)``. The preset's
internal crop is applied in exactly one place, :mod:`clumpdet.train.data.crop`:
training batches are cropped there (and their boxes shifted into the crop
frame), validation truth is clipped there, and the reference ``predict()``
crops its inputs internally and reports boxes in the input frame again.
"""
