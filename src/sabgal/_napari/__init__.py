"""napari plugin of sabgal (npe2 manifest ``napari.yaml``).

Open SA-β-gal images and ``sabgal run`` results folders, analyse an image,
tune the thresholds live, correct calls cell by cell and review whole plates.
The package is named ``_napari`` so that it never shadows napari itself;
napari and Qt are imported only inside it, and only by the modules that
need them (:mod:`._review` is plain Python and is tested without Qt).
"""

from __future__ import annotations

__all__: list[str] = []
