"""Data files shipped inside the package: benchmark samples and the bundled honesty calibration set.

Only the honesty set has code beside it (:mod:`surgery.data.honesty_set` reads it,
:mod:`surgery.data.build_honesty` rebuilds it byte for byte from the shared sources).
"""
