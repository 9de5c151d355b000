"""The ways a sweep's runs are trained, behind one contract (``contract.Executor``):

- ``in_process.InProcessExecutor``: one run after another in the sweep's process;
- ``pool.ProcessPoolExecutor``: ``jobs`` worker processes of this machine;
- ``torchrun.TorchrunExecutor``: every process of a ``torchrun`` launch trains each run;
- ``ray_tasks.RayExecutor``: each run a Ray task, on this machine or a cluster.

``choose.executor_for`` builds one from the command line's options. This package's
``__init__`` imports nothing, so that its modules can be imported one by one (Ray only
when asked for).
"""
