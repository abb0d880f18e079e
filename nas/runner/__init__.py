"""The search service (layer L3): one ask -> evaluate -> tell loop, driven by Ray Tune.

* :mod:`nas.runner.searcher` adapts Optuna (TPE / NSGA-II / random, RDBStorage in the study database)
  to Ray Tune's ``OptunaSearch``;
* :mod:`nas.runner.trainable` is what a Ray worker runs for one trial;
* :mod:`nas.runner.cost_gate` asks the study's learned cost model whether a sampled candidate is worth
  building (``fidelity.predict_skip``);
* :mod:`nas.runner.writer` is the Tune callback in the driver, the only writer of the database;
* :mod:`nas.runner.driver` wires them together; :mod:`nas.runner.api` is the Python API.
"""
