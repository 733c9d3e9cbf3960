"""Efficiency is a result: parameters, FLOPs, latency, memory, energy and CO₂ next to every accuracy number.

* ``energy``: the green accounting used by every command (:func:`~grainvl.bench.energy.count_parameters`,
  :func:`~grainvl.bench.energy.flops_per_sample`, :class:`~grainvl.bench.energy.EnergyTracker`,
  :func:`~grainvl.bench.energy.hardware_tags`).
* ``efficiency``: latency p50/p90 at batch 1 after warm-up, throughput at batch 32, peak memory, FLOPs per
  sample of one (model, task) (:func:`~grainvl.bench.efficiency.measure_efficiency`).
* ``inference``: the back-end that runs an X-VLM's image/text/fusion towers for latency (eager,
  ``torch.compile``, ONNX Runtime; :func:`~grainvl.bench.inference.load_towers`,
  :func:`~grainvl.bench.inference.route_towers`; ``auto`` picks onnx on the CPU in fp32).
* ``pareto``: the score-latency Pareto frontier, per task and on the average.
* ``runner``: ``grainvl bench``: every model in its own subprocess, fine-tune, ID/OOD evaluation, measurements
  (:func:`~grainvl.recipes.bench.run_bench`).
* ``report``: CSV, Markdown leaderboard and PNG plots from ``results.jsonl``
  (:func:`~grainvl.bench.report.write_report`).
"""
