"""The diffusion-theory escape experiment: particles leaving a basin of controllable sharpness.

:mod:`landscape` (the double well and its noise model), :mod:`simulate` (the real optimizers, one tensor of
particles), :mod:`theory` (temperatures, Kramers, exact 1-D passage time), :mod:`survival` (censored escape
times and bootstrap fits), :mod:`study` (the sweep and the Kramers check), :mod:`report` (tables, plots and
the written reading).
"""
