"""Efficiency is a result: parameters, FLOPs, latency, memory, energy and CO₂ next to every accuracy number.

``energy`` holds the green accounting used by every command (:func:`~grainvl.bench.energy.count_parameters`,
:func:`~grainvl.bench.energy.flops_per_sample`, :class:`~grainvl.bench.energy.EnergyTracker`,
:func:`~grainvl.bench.energy.hardware_tags`).
"""
