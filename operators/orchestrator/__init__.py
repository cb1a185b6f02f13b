"""The orchestrator: one definition of a run's steps (staging, each training stage in
``init_from`` order, eval), executed by ``vlm run`` on the local or the Kubernetes backend and
called step by step by the KFP components. Restart-safe: adopt what exists, skip what is
complete, never start a step before its inputs are complete (docs/ARCHITECTURE.md, "Orchestrator").

- ``plan.py``: the steps and their order;
- ``steps.py``: what each step does (the functions the driver and the KFP components call);
- ``status.py``: the status document ``<output>/status.json`` and the transition log;
- ``driver.py``: all steps in order (``vlm run``); ``cli.py``: ``vlm run`` and ``vlm run status``.
"""
