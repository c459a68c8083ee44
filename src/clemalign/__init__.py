"""clemalign: multi-modal registration for correlative light and electron microscopy.

Geometry convention (used by every module)
------------------------------------------
* Physical points are ``(x, y)`` in micrometres (um), ``x`` along image columns and
  ``y`` along rows, origin at the outer corner of the first pixel. The centre of pixel
  ``(row, col)`` of an image sampled at ``p`` px/um is therefore at
  ``x = (col + 0.5) / p``, ``y = (row + 0.5) / p``.
* A transform is a 3x3 homogeneous matrix in um that maps **moving** points to
  **fixed** points (``x_fixed = M @ [x_moving, y_moving, 1]``). The electron
  micrograph is the moving image, the light micrograph the fixed one.
"""

__version__ = "0.1.0"
